#!/usr/bin/env bash
# Runs lungseg_jax training on every worker of an existing Cloud TPU VM slice. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./launch.sh --tpu NAME --zone ZONE --config CONFIG --workdir WORKDIR [options] [-- TRAIN_FLAGS...]

Runs `python -m lungseg_jax.train` on every worker of an existing Cloud TPU VM slice,
one process per worker, joined into one JAX cluster (--multihost: JAX reads the slice's
topology from the TPU metadata). Three steps, each over `gcloud compute tpus tpu-vm`:

  1. sync:    packs this checkout's committed files (git archive HEAD) and copies them
              to ~/lungseg_jax on every worker (scp --worker=all)
  2. install: a venv in ~/lungseg_jax/.venv with the package and jax[tpu], plus the [gcs]
              extra for a gs:// WORKDIR (ssh --worker=all)
  3. train:   python -m lungseg_jax.train --config CONFIG --workdir WORKDIR --multihost
              TRAIN_FLAGS... on every worker at once (ssh --worker=all)

Re-running the same command resumes from WORKDIR's latest checkpoint, e.g. after a
preemption (the trainer saves a checkpoint on SIGTERM and exits with status 143).

Required:
  --tpu NAME          TPU VM name (gcloud compute tpus tpu-vm list)
  --zone ZONE         its zone, e.g. us-central2-b
  --config CONFIG     config file relative to the repo root, e.g. configs/incp_unet_snapshot.py
  --workdir WORKDIR   run directory every worker can reach: a gs:// bucket path (the
                      workers' service account needs write access) or a shared mount
                      (checkpoints are written by all workers together)
Options:
  --project PROJECT   Google Cloud project (default: gcloud's configured one)
  --jax-spec SPEC     what pip installs for JAX (default: 'jax[tpu]>=0.10.2,<0.12')
  --skip-sync         do not copy the code (already synced)
  --skip-install      do not (re)install (already installed)
  --dry-run           print the commands instead of running them
  -h, --help          this help
  -- TRAIN_FLAGS...   passed on to lungseg_jax.train, e.g. -- --config.num_epochs=30

Example (a v4-16 slice: 2 workers, 8 chips):
  ./launch.sh --tpu lungs-v4-16 --zone us-central2-b --config configs/incp_unet_snapshot.py \
      --workdir gs://my-bucket/runs/incp_snap -- --config.data.path=/mnt/data/split/train
EOF
}

die() { echo "launch.sh: $*" >&2; echo "Try ./launch.sh --help" >&2; exit 2; }

TPU="" ZONE="" CONFIG="" WORKDIR="" PROJECT="" DRY_RUN=0 SYNC=1 INSTALL=1
JAX_SPEC='jax[tpu]>=0.10.2,<0.12'
TRAIN_FLAGS=()
while (($#)); do
  case "$1" in
    --tpu) TPU="${2:?--tpu needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --jax-spec) JAX_SPEC="${2:?--jax-spec needs a value}"; shift 2 ;;
    --skip-sync) SYNC=0; shift ;;
    --skip-install) INSTALL=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAIN_FLAGS=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ -n "$TPU" ]] || die "--tpu is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ -f "$REPO/$CONFIG" ]] || die "--config $CONFIG: no such file in $REPO"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE" --worker=all)
[[ -n "$PROJECT" ]] && WHERE+=(--project "$PROJECT")
ARCHIVE="${TMPDIR:-/tmp}/lungseg_jax-$$.tar.gz"
REMOTE_DIR='~/lungseg_jax'

# Runs (or with --dry-run prints) one command, shell-quoted.
run() {
  if ((DRY_RUN)); then
    printf '%q ' "$@" | sed 's/ $//'; echo
  else
    "$@"
  fi
}

quote() { printf '%q ' "$@" | sed 's/ $//'; }

if ((SYNC)); then
  run git -C "$REPO" archive --format=tar.gz -o "$ARCHIVE" HEAD
  run "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU:lungseg_jax.tar.gz" "${WHERE[@]}"
  run "${GCLOUD[@]}" ssh "$TPU" "${WHERE[@]}" --command \
    "rm -rf $REMOTE_DIR/lungseg_jax $REMOTE_DIR/configs && mkdir -p $REMOTE_DIR && tar xzf ~/lungseg_jax.tar.gz -C $REMOTE_DIR"
  ((DRY_RUN)) || rm -f "$ARCHIVE"
fi
if ((INSTALL)); then
  PACKAGE=.
  [[ "$WORKDIR" == gs://* ]] && PACKAGE='.[gcs]'  # gcsfs and google-cloud-storage
  run "${GCLOUD[@]}" ssh "$TPU" "${WHERE[@]}" --command \
    "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e $(quote "$PACKAGE" "$JAX_SPEC")"
fi
TRAIN=(.venv/bin/python -m lungseg_jax.train --config "$CONFIG" --workdir "$WORKDIR" --multihost
       "${TRAIN_FLAGS[@]}")
run "${GCLOUD[@]}" ssh "$TPU" "${WHERE[@]}" --command "cd $REMOTE_DIR && $(quote "${TRAIN[@]}")"
