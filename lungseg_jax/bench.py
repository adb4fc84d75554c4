"""Benchmark of the trainer's own jitted train steps (``trainer.make_train_steps``, what
``train`` runs: ``config.steps_per_call`` steps per call).

    python -m lungseg_jax.bench --model incp_unet --image_size 128 --batch_size 4 \
        [--dtype float32] [--steps 20] [--config configs/default.py --config.x=y]

Prints one JSON line per case and then a table:
* ``"case": "train_step"``: the host's CPU (speed choices depend on it), time to
  trace and lower the step (Python; paid on every start), XLA's cold compile time
  (empty persistent cache), XLA's compile time from the persistent cache (in the same
  process, after ``jax.clear_caches``), images/s (median call after warm-up, each timed
  with ``block_until_ready``, divided by its steps; ``--steps`` and ``--warmup`` count
  steps, rounded up to whole calls, at least ``MIN_TIMED_CALLS`` timed), achieved
  GFLOP/s from the analytical FLOP count (3x the forward convolutions, the peer's
  convention), XLA's own FLOP and byte counts of one step (the bytes give the achieved
  memory bandwidth), and memory (XLA's buffer plan, the process' peak resident set, and
  the accelerator's peak where it reports one).
* ``"case": "input_path"``: images/s of drawing and augmenting batches alone
  (``INPUT_BATCHES_PER_CALL`` per jitted call, each written out and reduced to a
  checksum), and the ratio to the train step's consumption.
* ``"case": "step_profile"`` (CPU, with ``--profile_runs N``): milliseconds per step spent
  in each model layer's operations, forward and backward, and outside the model
  (``lungseg_jax.op_profile``; layers overlap, so they sum to more than the step).

bench's own flags always set the ``FLAG_OWNED_FIELDS`` (model, dtype, image size,
channels, batch size), their defaults included, whatever the ``--config`` file says;
``--config.x=y`` sets any other field and may not set those.
"""

import json
import os
import resource
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lungseg_jax import augment, models, op_profile, runtime, trainer, validation

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "default.py")
# The input path is timed over this many consecutive batches per jitted call: the train
# step holds it, so it pays no dispatch of its own, and one call per batch timed the call
# too (0.165 ms for an empty one on an H200, about a quarter of the path's 0.62 ms at
# 512x512).
INPUT_BATCHES_PER_CALL = 8
# The train steps are timed over at least this many calls (the median of fewer is noise).
MIN_TIMED_CALLS = 5
# Config fields that bench's own flags set (``--config.<field>`` may not set them).
FLAG_OWNED_FIELDS = {"model.name": "model", "model.dtype": "dtype",
                     "data.image_size": "image_size", "data.channels": "channels",
                     "batch_size": "batch_size"}
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Base training config.",
                                lock_config=True)
flags.DEFINE_enum("model", "incp_unet", sorted(models.MODELS), "Model to benchmark.")
flags.DEFINE_integer("image_size", 128, "Square image size.")
flags.DEFINE_integer("batch_size", 4, "Global batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("channels", 3, "Input channels (3 as the peer benchmark).")
flags.DEFINE_integer("steps", 20, "Timed steps (rounded up to whole calls of "
                     "config.steps_per_call steps, at least MIN_TIMED_CALLS).", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation (rounded up to whole "
                     "calls).", lower_bound=0)
flags.DEFINE_integer("num_images", 32, "Resident training images to draw batches from "
                     "(at least --batch_size).", lower_bound=1)
flags.DEFINE_integer("profile_runs", 0, "Calls to profile per layer (CPU only; 0: none).",
                     lower_bound=0)
flags.DEFINE_integer("profile_depth", 1, "Module levels in a profiled layer's name "
                     "(1: ConvBlock_3; 2: ConvBlock_3/ConvBNAct_0).", lower_bound=1)


def forward_conv_flops(model: models.UNet, image_size: int, channels: int) -> int:
    """2 x multiply-adds of every convolution of one forward pass of one image."""
    def block_convs(cin, f):
        if model.block == "conv":
            return [(3, cin, 4 * f)]
        return [(1, cin, f), (3, f, f), (3, f, f), (1, cin, f), (3, f, f), (1, cin, f),
                (1, cin, f)]

    features, plan, skips = tuple(model.features), [], []
    c, scale = channels, 1
    for level, f in enumerate(features):
        plan.append((scale, block_convs(c, f)))
        c = 4 * f
        if level == 0:
            skips.append(c)
        scale *= 2
        if level < len(features) - 1:
            skips.append(c)
    plan.append((scale, block_convs(c, features[-1])))
    c = 4 * features[-1]
    for f in reversed(features[:-1]):
        scale //= 2
        plan.append((scale, block_convs(c + skips.pop(), f)))
        c = 4 * f
    plan.append((1, [(3, c + skips.pop(), 1)]))
    return 2 * sum((image_size // s) ** 2 * k * k * cin * cout
                   for s, convs in plan for k, cin, cout in convs)


def owned_field_overrides(argv) -> list:
    """``(argument, field)`` for each ``--config.<field>`` argument in ``argv`` that sets a
    ``FLAG_OWNED_FIELDS`` field."""
    return [(arg, field) for arg in argv for field in FLAG_OWNED_FIELDS
            if arg.split("=", 1)[0] == f"--config.{field}"]


def bench_config():
    """``--config`` with the fields of ``FLAG_OWNED_FIELDS`` set from bench's own flags."""
    config = FLAGS.config.copy_and_resolve_references()
    with config.unlocked():
        config.model.name = FLAGS.model
        config.model.dtype = FLAGS.dtype
        config.data.image_size = FLAGS.image_size
        config.data.channels = FLAGS.channels
        config.batch_size = FLAGS.batch_size
    return config


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def device_peak_mb() -> float | None:
    """Peak memory in use on the first device (GPU/TPU), None where it reports none (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**20, 1)


def median_seconds(run_once, runs: int, warmup_runs: int) -> float:
    for _ in range(warmup_runs):
        run_once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_benchmark(config, steps: int, warmup: int, num_images: int, profile_runs: int = 0,
                  profile_depth: int = 1) -> list:
    """The cases' result dicts (see module docstring)."""
    platform = jax.devices()[0].platform
    mesh = trainer.create_mesh()
    validation.check_config(config)
    validation.check_mesh(config, mesh.size)
    if num_images < config.batch_size:
        raise ValueError(f"num_images={num_images}: fewer resident images than one batch "
                         f"(batch_size={config.batch_size})")
    if profile_runs and platform != "cpu":
        raise ValueError(f"profile_runs={profile_runs}: the per-layer profile is CPU-only, "
                         f"not {platform} (use jax.profiler and TensorBoard there)")
    rng = np.random.default_rng(0)
    size, channels, batch = config.data.image_size, config.data.channels, config.batch_size
    images = rng.random((num_images, size, size, channels), dtype=np.float32)
    masks = (rng.random((num_images, size, size, 1)) > 0.5).astype(np.float32)
    data = trainer.put_replicated(trainer.DeviceData(images, masks), mesh)
    steps_per_epoch = num_images // batch
    model = models.create_model(config.model)
    tx, learning_rate_fn = trainer.create_optimizer(config, total_steps=10_000)
    state = trainer.create_train_state(config, model, tx, mesh)
    train_steps = trainer.make_train_steps(config, mesh, steps_per_epoch, learning_rate_fn)
    per_call = config.steps_per_call
    num_steps = np.int32(per_call)

    lowered, trace_lower_s = timed(train_steps.lower, state, data, num_steps)
    compiled, cold_s = timed(lowered.compile)
    jax.clear_caches()
    lowered = train_steps.lower(state, data, num_steps)
    _, cached_s = timed(lowered.compile)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    # XLA counts a loop's body once when its trip count is not a constant: one step.
    xla_flops = cost.get("flops", float("nan"))
    xla_bytes = cost.get("bytes accessed", float("nan"))

    def one_call():
        nonlocal state
        state, measurements = compiled(state, data, num_steps)
        jax.block_until_ready(measurements)

    timed_calls = max(-(-steps // per_call), MIN_TIMED_CALLS)  # whole calls
    warmup_calls = -(-warmup // per_call)
    step_s = median_seconds(one_call, timed_calls, warmup_calls) / per_call
    flops = 3 * forward_conv_flops(model, size, channels) * batch
    common = {"model": config.model.name, "image_size": size, "batch_size": batch,
              "dtype": config.model.dtype, "devices": mesh.size,
              "platform": platform, "jax": jax.__version__, "host_cpu": runtime.host_cpu()}
    train = {"case": "train_step", **common, "images_per_sec": round(batch / step_s, 3),
             "step_ms_median": round(1e3 * step_s, 2), "steps_per_call": per_call,
             "timed_steps": timed_calls * per_call,
             "trace_lower_s": round(trace_lower_s, 2),
             "compile_cold_s": round(cold_s, 2), "compile_cached_s": round(cached_s, 2),
             "analytical_gflop_per_step": round(flops / 1e9, 3),
             "achieved_gflop_per_s": round(flops / step_s / 1e9, 2),
             "xla_gflop_per_step": round(xla_flops / 1e9, 3),
             "xla_gbyte_per_step": round(xla_bytes / 1e9, 3),
             "achieved_gbyte_per_s": round(xla_bytes / step_s / 1e9, 1),
             "xla_buffer_mb": round((memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                     + memory.output_size_in_bytes) / 2**20, 1),
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "device_peak_mb": device_peak_mb()}

    aug_key = trainer.rng_streams(config.seed)[2]

    def one_batch(data, step):
        """The step's draw and augmentation (its sharding too), the batch written out
        (the barrier: a checksum alone let XLA fuse the mask's thresholding into the
        sum), reduced to a checksum."""
        images, masks = trainer.draw_batch(data, step, seed=config.seed, batch_size=batch,
                                           steps_per_epoch=steps_per_epoch)
        images = jax.lax.with_sharding_constraint(images, trainer.batch_sharded(mesh))
        masks = jax.lax.with_sharding_constraint(masks, trainer.batch_sharded(mesh))
        images, masks = augment.augment(jax.random.fold_in(aug_key, step), images, masks,
                                        config.augment)
        images, masks = jax.lax.optimization_barrier((images, masks))
        return images.sum() + masks.sum()

    @jax.jit
    def input_path(data, first_step):
        steps = first_step + jnp.arange(INPUT_BATCHES_PER_CALL)
        return jax.lax.map(lambda step: one_batch(data, step), steps)

    counter = iter(range(0, 10**9, INPUT_BATCHES_PER_CALL))
    input_s = median_seconds(lambda: jax.block_until_ready(input_path(data, next(counter))),
                             steps, warmup + 1) / INPUT_BATCHES_PER_CALL
    inputs = {"case": "input_path", **common, "images_per_sec": round(batch / input_s, 1),
              "ratio_to_train_step": round(step_s / input_s, 1),
              "batches_per_call": INPUT_BATCHES_PER_CALL}
    if not profile_runs:
        return [train, inputs]
    layers = op_profile.layer_times(compiled, one_call, profile_runs, profile_depth)
    profile = {"case": "step_profile", **common, "runs": profile_runs,
               "eigen_convolutions": op_profile.eigen_convolutions(compiled.as_text()),
               "layers": [{"layer": label, "ms": round(1e3 * s / per_call, 2)}
                          for label, s in layers]}
    return [train, inputs, profile]


def describe_cpu(cpu: dict) -> str:
    """``"AMD EPYC (family 25, model 17), AVX-512, 2 cores"`` from ``runtime.host_cpu()``."""
    if not cpu:
        return f"CPU not reported, {os.cpu_count()} cores"
    return (f"{cpu['name']} (family {cpu['family']}, model {cpu['model']}), "
            f"{'AVX-512' if cpu['avx512'] else 'no AVX-512'}, {os.cpu_count()} cores")


def format_table(results: list) -> str:
    train, inputs = results[:2]
    rows = [("model", f"{train['model']} {train['image_size']}x{train['image_size']} "
                      f"batch {train['batch_size']} {train['dtype']} on {train['devices']} "
                      f"{train['platform']} device(s)"),
            ("host", describe_cpu(train["host_cpu"])),
            ("train step", f"{train['images_per_sec']:.2f} img/s "
                           f"(median {train['step_ms_median']:.1f} ms)"),
            ("achieved", f"{train['achieved_gflop_per_s']:.1f} GFLOP/s "
                         f"({train['analytical_gflop_per_step']:.2f} GFLOP/step analytical, "
                         f"{train['xla_gflop_per_step']:.2f} by XLA)"),
            ("compile", f"{train['compile_cold_s']:.1f} s cold, "
                        f"{train['compile_cached_s']:.2f} s from the persistent cache, "
                        f"after {train['trace_lower_s']:.1f} s of tracing and lowering"),
            ("bandwidth", f"{train['achieved_gbyte_per_s']:.1f} GB/s "
                          f"({train['xla_gbyte_per_step']:.2f} GB/step accessed, by XLA)"),
            ("memory", f"XLA buffers {train['xla_buffer_mb']:.0f} MB, "
                       f"process peak RSS {train['peak_rss_mb']:.0f} MB"
                       + (f", device peak {train['device_peak_mb']:.0f} MB"
                          if train["device_peak_mb"] is not None else "")),
            ("input path", f"{inputs['images_per_sec']:.1f} img/s "
                           f"({inputs['ratio_to_train_step']:.0f}x the step's consumption)")]
    for profile in results[2:]:
        rows.append(("per layer", f"ms per step, mean of {profile['runs']} profiled calls "
                                  f"(layers overlap: they sum to more than the step)"))
        if profile["eigen_convolutions"]:
            rows.append(("", f"(without {profile['eigen_convolutions']} convolutions run by "
                             f"XLA's Eigen kernels, after their operations return)"))
        rows += [(f"{layer['ms']:9.2f}", layer["layer"]) for layer in profile["layers"]]
    return "\n".join(f"{name:<12} {value}" for name, value in rows)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    overrides = owned_field_overrides(sys.argv)
    if overrides:
        arg, field = overrides[0]
        raise app.UsageError(f"{arg}: set by bench's own flags; use --{FLAG_OWNED_FIELDS[field]}")
    runtime.reexec_with_huge_pages()
    with tempfile.TemporaryDirectory() as cache_dir:
        runtime.setup_jax(cache_dir)  # empty cache: the first compile is a cold one
        results = run_benchmark(bench_config(), FLAGS.steps, FLAGS.warmup, FLAGS.num_images,
                                FLAGS.profile_runs, FLAGS.profile_depth)
    for result in results:
        print(json.dumps(result), flush=True)
    print(format_table(results), flush=True)


if __name__ == "__main__":
    app.run(main)
