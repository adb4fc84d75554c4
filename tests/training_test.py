"""End to end on tiny synthetic data: train, crash, resume, evaluate; 1 vs 2 devices."""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, deterministic_metrics
from lungseg_jax.data import slices as folders
from lungseg_jax.data.phantoms import synthetic_slices
from lungseg_jax.evaluation import evaluator
from lungseg_jax.model.unet import ConvBNAct, create_model
from lungseg_jax.ops import policy
from lungseg_jax.rundir import checkpoints, records
from lungseg_jax.training import loop, preemption
from lungseg_jax.training import steps as step_fns
from lungseg_jax.training.loop import train_and_evaluate
from lungseg_jax.training.mesh import create_mesh, put_replicated
from lungseg_jax.training.state import create_optimizer, create_train_state


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted tiny run, shared by the tests below."""
    from conftest import tiny_config as make  # fixture function, called directly
    config = make.__wrapped__()
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    state = train_and_evaluate(config, workdir)
    return config, workdir, state


def test_run_learns_writes_metrics_and_keeps_snapshots(finished_run):
    config, workdir, state = finished_run
    records = read_metrics(workdir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert all(0.0 <= r["val_pooled_iou"] <= 1.0 for r in records)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["features"] == [4, 8]
    manager = checkpoints.create_manager(workdir, read_only=True)
    assert checkpoints.saved_snapshot_steps(manager) == [4, 8]
    assert int(state.step) == 8


def test_crash_then_resume_matches_uninterrupted_run(finished_run, tmp_path,
                                                    crash_after_first_checkpoint):
    config, reference_dir, reference = finished_run
    workdir = str(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, workdir)
    assert [r["step"] for r in read_metrics(workdir)] == [4]
    crash_after_first_checkpoint()  # saves work again
    resumed = train_and_evaluate(config, workdir)
    assert deterministic_metrics(workdir) == deterministic_metrics(reference_dir)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
                 jax.device_get(reference.params))


def test_sigterm_saves_mid_epoch_and_resume_matches(finished_run, tmp_path, monkeypatch):
    """Stopped after a call of 3 steps (4 per epoch), resumed with 1 step per call: the
    records equal those of the uninterrupted run with its 8 (steps_per_call does not
    change what is trained)."""
    config, reference_dir, reference = finished_run
    config = config.copy_and_resolve_references()
    config.steps_per_call = 3
    workdir = str(tmp_path)
    real_append = records.append_metrics

    def append_then_sigterm(path, record):
        real_append(path, record)
        os.kill(os.getpid(), signal.SIGTERM)  # seen by the loop after its next call

    monkeypatch.setattr(records, "append_metrics", append_then_sigterm)
    with pytest.raises(preemption.Preempted, match="step 7"):
        train_and_evaluate(config, workdir)
    assert checkpoints.create_manager(workdir, read_only=True).latest_step() == 7
    monkeypatch.setattr(records, "append_metrics", real_append)
    config.steps_per_call = 1
    resumed = train_and_evaluate(config, workdir)
    # Epoch 2 straddles the stop; its record still equals the uninterrupted one.
    assert deterministic_metrics(workdir) == deterministic_metrics(reference_dir)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
                 jax.device_get(reference.params))


def test_finished_run_returns_at_once(finished_run, caplog):
    config, workdir, _ = finished_run
    before = os.path.getmtime(os.path.join(workdir, "metrics.jsonl"))
    state = train_and_evaluate(config, workdir)
    assert int(state.step) == 8
    assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) == before


def test_workdir_of_a_different_config_is_refused(finished_run):
    config, workdir, _ = finished_run
    config = config.copy_and_resolve_references()
    config.learning_rate = 0.5
    with pytest.raises(ValueError, match="learning_rate: 0.001 -> 0.5"):
        train_and_evaluate(config, workdir)


def test_one_and_two_devices_give_the_same_run(tiny_config, tmp_path):
    assert jax.device_count() == 2, "conftest forces two CPU devices"
    tiny_config.num_epochs = 1
    one = train_and_evaluate(tiny_config, str(tmp_path / "one"), jax.devices()[:1])
    two = train_and_evaluate(tiny_config, str(tmp_path / "two"), jax.devices())
    a, b = deterministic_metrics(tmp_path / "one"), deterministic_metrics(tmp_path / "two")
    for key in ("train_loss", "grad_norm", "learning_rate", "val_loss"):
        np.testing.assert_allclose(a[0][key], b[0][key], rtol=1e-5, err_msg=key)
    # Thresholded metrics could flip a pixel where float noise crosses 0 logits.
    for key in ("val_pooled_iou", "val_mean_iou", "val_mean_dice"):
        np.testing.assert_allclose(a[0][key], b[0][key], atol=1e-3, err_msg=key)
    # Parameters and BatchNorm statistics agree to float noise: the conv biases that feed
    # BatchNorm get their exact zero gradient, not noise that Adam would scale to real steps
    # (ConvBNAct; with noise there, val_loss differed by 1e-4, and those biases by
    # 2-5x their leaf's largest value). Float noise through four Adam steps, where a
    # gradient nearly cancels: up to 2e-4 of a leaf's largest value on a Zen 4 host.
    for x, y in zip(jax.tree.leaves((one.params, one.batch_stats)),
                    jax.tree.leaves((two.params, two.batch_stats))):
        np.testing.assert_allclose(x, y, atol=1e-3 * np.abs(y).max())
    assert int(one.step) == int(two.step) == 4


def test_steps_to_next_stop_ends_calls_where_the_host_has_work():
    def stop(step, checkpoint_every=100, snapshots=()):
        plan = loop.Plan(*[None] * 5, steps_per_epoch=12, total_steps=50,
                         snapshot_steps=list(snapshots), checkpoint_every=checkpoint_every)
        return plan.steps_to_next_stop(step)
    assert stop(0) == 12 and stop(5) == 7 and stop(12) == 12  # epoch ends
    assert stop(5, checkpoint_every=4) == 3  # checkpoints
    assert stop(5, snapshots=(3, 9, 24)) == 4  # the next snapshot, not a past one
    assert stop(49) == 1 and stop(48) == 2  # the run's end (48 is an epoch end too)


def test_check_finite_names_the_step_inside_a_call():
    nan = float("nan")
    history = [step_fns.Measured(3, {"loss": np.array([1.0, 1.0, 1.0, nan]),
                                    "grad_norm": np.ones(4)}),
               step_fns.Measured(2, {"loss": np.ones(4),
                                    "grad_norm": np.array([1.0, np.inf, 1.0, 1.0])})]
    with pytest.raises(FloatingPointError, match="gradient norm \\(inf\\) at step 15;"):
        step_fns.check_finite(step_fns.per_step(history), first_step=10)
    # Values past a call's num_steps were never written: not checked.
    step_fns.check_finite(step_fns.per_step(history[:1]), first_step=10)


def test_preemption_on_several_hosts_reports_every_step_of_a_call(monkeypatch):
    """JAX's service answers true for exactly one step (after the furthest any process
    reported); a call that ran past it must still stop, and every step is reported."""
    reported = []

    def reached_preemption(step):
        reported.append(step)
        return step == 5

    monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption.ocp_multihost, "reached_preemption", reached_preemption)
    guard = preemption.PreemptionGuard()
    assert not guard.reached(range(1, 4))
    assert guard.reached(range(4, 7))
    assert reported == [1, 2, 3, 4, 5, 6]


def test_cpu_options_memory_scheduler_only_for_large_batches(tiny_config):
    mesh = create_mesh()  # two CPU devices (conftest)
    both = {**policy.CPU_CODEGEN, **policy.CPU_MEMORY_SCHEDULER}
    tiny_config.data.image_size, tiny_config.batch_size = 256, 8
    assert step_fns.compiler_options(tiny_config, mesh) == both
    tiny_config.batch_size = 4  # 256x256x2 per device
    assert step_fns.compiler_options(tiny_config, mesh) == policy.CPU_CODEGEN
    tiny_config.data.image_size = 512
    assert step_fns.compiler_options(tiny_config, mesh) == both


def test_cpu_options_eigen_convolutions_only_for_models_without_branches(tiny_config):
    mesh = create_mesh()
    assert tiny_config.model.name == "incp_unet"
    assert step_fns.compiler_options(tiny_config, mesh) == policy.CPU_CODEGEN
    tiny_config.model.name = "conv_unet"
    assert step_fns.compiler_options(tiny_config, mesh) == {**policy.CPU_CODEGEN,
                                                           **policy.CPU_EIGEN_CONVOLUTIONS}


def ynn_convolutions(hlo_text: str) -> int:
    """How many of a compiled program's YNNPACK fusions hold a convolution."""
    bodies = dict(re.findall(r"^%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S))
    called = re.findall(r"calls=%([\w.\-]+), [^\n]*__ynn_fusion", hlo_text)
    return sum("convolution(" in bodies[name] for name in called)


def lowered_conv_unet_steps(config):
    """The conv U-Net's train steps, lowered for ``config`` (two CPU devices)."""
    config.model.name = "conv_unet"
    mesh = create_mesh()
    model = create_model(config.model)
    tx, learning_rate_fn = create_optimizer(config, total_steps=10)
    state = create_train_state(config, model, tx, mesh)
    shape = (8, config.data.image_size, config.data.image_size, 1)
    train_data = put_replicated(
        step_fns.DeviceData(np.zeros(shape, np.float32), np.zeros(shape, np.float32)), mesh)
    return step_fns.make_train_steps(config, mesh, 2, learning_rate_fn).lower(
        state, train_data, np.int32(1))


def test_conv_unet_step_compiles_with_eigen_convolutions(tiny_config):
    """The option reaches XLA: the conv U-Net's 32-channel convolutions (more than 16
    channels, XLA's rule for YNNPACK) leave YNNPACK's fusions (a mistyped name or
    value would fail to compile)."""
    lowered = lowered_conv_unet_steps(tiny_config)
    assert ynn_convolutions(lowered.compile().as_text()) == 0
    xla_default = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                   "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_REDUCE"}
    assert ynn_convolutions(lowered.compile(compiler_options=xla_default).as_text()) > 0


def test_train_step_compiles_with_the_memory_scheduler(tiny_config, monkeypatch):
    """The option reaches XLA and saves scratch space (a mistyped name or value would
    also fail here, at compile time)."""
    monkeypatch.setattr(policy, "MEMORY_SCHEDULER_MIN_PIXELS", 0)
    lowered = lowered_conv_unet_steps(tiny_config)
    ours = lowered.compile().memory_analysis().temp_size_in_bytes
    default = lowered.compile(compiler_options={
        "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_DEFAULT"}).memory_analysis()
    assert ours < 0.8 * default.temp_size_in_bytes  # 1.3 against 2.1 MB when written


@pytest.mark.parametrize("field, value, message", [
    ("model.name", "resnet", "config.model.name='resnet'"),
    ("num_epochs", -1, "config.num_epochs=-1"),
    ("data.image_size", 30, "config.data.image_size=30"),
    ("schedule.name", "step", "config.schedule.name='step'"),
    ("batch_size", 3, "config.batch_size=3 .*divisible by the 2 devices"),
])
def test_invalid_config_is_refused_before_writing(tiny_config, tmp_path, field, value, message):
    section, _, key = field.rpartition(".")
    (tiny_config[section] if section else tiny_config)[key] = value
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_evaluate_scores_final_snapshots_and_ensemble_at_native_size(finished_run, tmp_path):
    _, workdir, _ = finished_run
    folders.write_folder(str(tmp_path), synthetic_slices(3, 48, seed=77))
    result = evaluator.evaluate_workdir(workdir, str(tmp_path))
    assert result["num_images"] == 3
    assert [s["step"] for s in result["snapshots"]] == [4, 8]
    for metrics in [result["final"], result["ensemble"], *result["snapshots"]]:
        assert set(metrics) >= {"pooled_iou", "mean_iou", "mean_dice"}
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("pooled_iou", "mean_iou", "mean_dice"))
    # The final weights are the last snapshot.
    assert result["final"] == {k: v for k, v in result["snapshots"][-1].items() if k != "step"}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_command_line_train_and_evaluate(tmp_path):
    workdir, test_dir, output = tmp_path / "run", tmp_path / "test", tmp_path / "eval.json"
    overrides = ["--config.data.image_size=32", "--config.model.features=(4,8)",
                 "--config.data.synthetic.num_images=12", "--config.data.synthetic.size=32",
                 "--config.num_epochs=1", "--config.eval_batch_size=4",
                 "--config.data.val_fraction=0.34", "--config.schedule.num_cycles=1"]
    train = run_cli("lungseg_jax.train", "--config", "configs/default.py",
                    f"--workdir={workdir}", *overrides)
    assert train.returncode == 0, train.stderr[-3000:]
    folders.write_folder(str(test_dir), synthetic_slices(2, 40, seed=3))
    evaluate = run_cli("lungseg_jax.evaluate", f"--workdir={workdir}", f"--data_dir={test_dir}",
                       f"--output={output}")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["num_images"] == 2 and len(result["snapshots"]) == 1
    assert "pooled IoU" in evaluate.stdout and "ensemble" in evaluate.stdout


def test_command_line_rejects_unknown_config_key(tmp_path):
    result = run_cli("lungseg_jax.train", "--config", "configs/default.py",
                     f"--workdir={tmp_path / 'run'}", "--config.modle.name=conv_unet")
    assert result.returncode != 0
    assert "modle" in result.stderr
    assert not os.path.exists(tmp_path / "run")


def test_soft_masks_reach_the_train_step_as_lung_fractions(tiny_config):
    tiny_config.data.soft_masks = True
    plan = loop.plan_run(tiny_config)
    fractions = np.unique(plan.train_masks)
    assert ((fractions > 0) & (fractions < 1)).any()  # 64 -> 32: boundary pixels half lung
    mesh = create_mesh()
    data = put_replicated(step_fns.DeviceData(plan.train_images, plan.train_masks), mesh)
    tiny_config.augment.enabled = False  # the drawn batch as it is, to compare
    _, masks = jax.jit(lambda step: step_fns.augmented_batch(
        data, step, tiny_config, mesh, plan.steps_per_epoch, jax.random.key(0)))(0)
    picked = step_fns.draw_batch(data, 0, seed=tiny_config.seed,
                                 batch_size=tiny_config.batch_size,
                                 steps_per_epoch=plan.steps_per_epoch)[1]
    np.testing.assert_array_equal(masks, picked)
    tiny_config.augment.enabled = True
    _, moved = jax.jit(lambda step: step_fns.augmented_batch(
        data, step, tiny_config, mesh, plan.steps_per_epoch, jax.random.key(0)))(0)
    values = np.asarray(moved)
    assert ((values > 0.01) & (values < 0.99)).any()  # still fractions after the warp
