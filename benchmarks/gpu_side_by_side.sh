#!/usr/bin/env bash
# Ours against the PyTorch peer on one CUDA GPU, case after case, within a time budget.
#
#   PEER=../shared/peers BUDGET_S=450 bash benchmarks/gpu_side_by_side.sh > gpu.log
#
# For each case (model:size): lungseg_jax.bench in float32, then the peer eager in NCHW
# and in channels_last (benchmarks/peer_on_cuda.py); then bfloat16 cases of ours, then
# torch.compile cases of the peer. Every line of JSON either prints goes to stdout; a
# case is not started once BUDGET_S seconds have passed (device time is lent by the
# quarter hour). STEPS/WARMUP set the timed and warm-up steps of both.
set -u
PEER=${PEER:-../shared/peers}
BUDGET_S=${BUDGET_S:-450}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
PY=${PYTHON:-python3}
CASES=${CASES-"incp_unet:256 conv_unet:256 incp_unet:128 conv_unet:128 incp_unet:512 conv_unet:512"}
BF16_CASES=${BF16_CASES-"incp_unet:256 conv_unet:512"}
COMPILE_CASES=${COMPILE_CASES-"incp_unet:256"}
start=$SECONDS

in_budget() {
  if (( SECONDS - start > BUDGET_S )); then
    echo "# budget of ${BUDGET_S} s spent: skipped $*"
    return 1
  fi
}

peer_model() { [[ $1 == incp_unet ]] && echo incp || echo conv; }

ours() {  # model size dtype
  echo "# ours $*, t=$((SECONDS - start)) s"
  "$PY" -m lungseg_jax.bench --model="$1" --image_size="$2" --dtype="$3" \
    --steps="$STEPS" --warmup="$WARMUP" 2>&1 | grep -E '^\{|Error|error' | tail -20
}

theirs() {  # model size mode channels_last
  echo "# peer $*, t=$((SECONDS - start)) s"
  "$PY" benchmarks/peer_on_cuda.py --peer "$PEER" -- --model "$(peer_model "$1")" \
    --size "$2" --mode "$3" --channels-last "$4" --steps "$STEPS" --warmup "$WARMUP" \
    2>&1 | grep -E '^\{|Error|error' | tail -20
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
for case in $CASES; do
  IFS=: read -r model size <<<"$case"
  in_budget "$case" || continue
  ours "$model" "$size" float32
  theirs "$model" "$size" eager 0
  theirs "$model" "$size" eager 1
done
for case in $BF16_CASES; do
  IFS=: read -r model size <<<"$case"
  in_budget "bfloat16 $case" || continue
  ours "$model" "$size" bfloat16
done
for case in $COMPILE_CASES; do
  IFS=: read -r model size <<<"$case"
  in_budget "torch.compile $case" || continue
  theirs "$model" "$size" compile 0
done
echo "# done, t=$((SECONDS - start)) s"
