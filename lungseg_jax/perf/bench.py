"""Benchmark of the trainer's own jitted train steps (``training.steps.make_train_steps``,
what ``train`` runs: ``config.steps_per_call`` steps per call). The command is
``python -m lungseg_jax.bench``; what it prints:

* ``"case": "train_step"``: the host's CPU (speed choices depend on it), time to
  trace and lower the step (Python; paid on every start), XLA's cold compile time
  (empty persistent cache), XLA's compile time from the persistent cache (in the same
  process, after ``jax.clear_caches``), images/s (median call after warm-up, each timed
  with ``block_until_ready``, divided by its steps; ``steps`` and ``warmup`` count
  steps, rounded up to whole calls, at least ``MIN_TIMED_CALLS`` timed), achieved
  GFLOP/s from the analytical FLOP count (3x the forward convolutions, the peer's
  convention), XLA's own FLOP and byte counts of one step (the bytes give the achieved
  memory bandwidth), and memory (XLA's buffer plan, the process' peak resident set, and
  the accelerator's peak where it reports one).
* ``"case": "input_path"``: images/s of drawing and augmenting batches alone
  (``INPUT_BATCHES_PER_CALL`` per jitted call, each written out and reduced to a
  checksum), and the ratio to the train step's consumption.
* ``"case": "step_profile"`` (CPU, with ``profile_runs``): milliseconds per step spent
  in each model layer's operations, forward and backward, and outside the model
  (``perf.op_profile``; layers overlap, so they sum to more than the step).
"""

import os
import resource
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lungseg_jax.model.unet import create_model, init_variables
from lungseg_jax.ops import conv, policy, reference
from lungseg_jax.perf import op_profile
from lungseg_jax.training.config_checks import check_config, check_mesh
from lungseg_jax.training.mesh import create_mesh, put_replicated
from lungseg_jax.training.state import create_optimizer, create_train_state, rng_streams
from lungseg_jax.training.steps import DeviceData, augmented_batch, make_train_steps

# Batches per timed call of the input path: the train step holds it, so it pays no call
# of its own, and one call per batch would time the call too.
INPUT_BATCHES_PER_CALL = 8
# The train steps are timed over at least this many calls (the median of fewer is noise).
MIN_TIMED_CALLS = 5
CONV_LAYERS = (conv.Conv, reference.Conv)
# Config fields that the command's own flags set (``--config.<field>`` may not set them).
FLAG_OWNED_FIELDS = {"model.name": "model", "model.dtype": "dtype",
                     "data.image_size": "image_size", "data.channels": "channels",
                     "batch_size": "batch_size"}


def owned_field_overrides(argv) -> list:
    """``(argument, field)`` for each ``--config.<field>`` argument in ``argv`` that sets a
    ``FLAG_OWNED_FIELDS`` field."""
    return [(arg, field) for arg in argv for field in FLAG_OWNED_FIELDS
            if arg.split("=", 1)[0] == f"--config.{field}"]


def forward_conv_flops(model, image_size: int, channels: int) -> int:
    """2 x multiply-adds of every convolution of one forward pass of one image, counted
    from the model's own convolution layers as it builds itself."""
    flops = []

    def count(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, CONV_LAYERS):
            height, width = args[0].shape[1:3]  # a layer's parts share its output's size
            cin = sum(part.shape[-1] for part in args)
            flops.append(2 * height * width * module.kernel_size ** 2 * cin * module.features)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(count):
        jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_size, channels))
    return sum(flops)


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


def random_device_data(config, num_images: int, mesh) -> DeviceData:
    """``num_images`` random images and masks of the config's size, on the device."""
    rng = np.random.default_rng(0)
    size, channels = config.data.image_size, config.data.channels
    images = rng.random((num_images, size, size, channels), dtype=np.float32)
    masks = (rng.random((num_images, size, size, 1)) > 0.5).astype(np.float32)
    return put_replicated(DeviceData(images, masks), mesh)


def check_request(config, mesh, num_images: int, profile_runs: int) -> None:
    check_config(config)
    check_mesh(config, mesh.size)
    if num_images < config.batch_size:
        raise ValueError(f"num_images={num_images}: fewer resident images than one batch "
                         f"(batch_size={config.batch_size})")
    platform = mesh.devices.flat[0].platform
    if profile_runs and platform != "cpu":
        raise ValueError(f"profile_runs={profile_runs}: the per-layer profile is CPU-only, "
                         f"not {platform} (use jax.profiler and TensorBoard there)")


def run_benchmark(config, steps: int, warmup: int, num_images: int, profile_runs: int = 0,
                  profile_depth: int = 1) -> list:
    """The cases' result dicts (see the module docstring)."""
    mesh = create_mesh()
    check_request(config, mesh, num_images, profile_runs)
    data = random_device_data(config, num_images, mesh)
    steps_per_epoch = num_images // config.batch_size
    common = {"model": config.model.name, "image_size": config.data.image_size,
              "batch_size": config.batch_size, "dtype": config.model.dtype, "devices": mesh.size,
              "platform": mesh.devices.flat[0].platform, "jax": jax.__version__,
              "host_cpu": policy.host_cpu()}
    train, compiled, one_call = time_train_steps(config, mesh, data, steps_per_epoch, steps,
                                                 warmup)
    inputs = time_input_path(config, mesh, data, steps_per_epoch, steps, warmup,
                             train["step_ms_median"] / 1e3)
    results = [{"case": "train_step", **common, **train}, {"case": "input_path", **common, **inputs}]
    if profile_runs:
        results.append({"case": "step_profile", **common,
                        **profile_layers(compiled, one_call, config, profile_runs, profile_depth)})
    return results


def time_train_steps(config, mesh, data, steps_per_epoch: int, steps: int, warmup: int):
    """(the train step's figures, the compiled steps, a function that runs one call)."""
    model = create_model(config.model)
    tx, learning_rate_fn = create_optimizer(config, total_steps=10_000)
    state = create_train_state(config, model, tx, mesh)
    train_steps = make_train_steps(config, mesh, steps_per_epoch, learning_rate_fn)
    per_call, batch = config.steps_per_call, config.batch_size
    num_steps = np.int32(per_call)

    lowered, trace_lower_s = timed(train_steps.lower, state, data, num_steps)
    compiled, cold_s = timed(lowered.compile)
    jax.clear_caches()
    _, cached_s = timed(train_steps.lower(state, data, num_steps).compile)
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
    step_s = median_seconds(one_call, timed_calls, -(-warmup // per_call)) / per_call
    flops = 3 * forward_conv_flops(model, config.data.image_size, config.data.channels) * batch
    figures = {"images_per_sec": round(batch / step_s, 3),
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
    return figures, compiled, one_call


def time_input_path(config, mesh, data, steps_per_epoch: int, steps: int, warmup: int,
                    step_s: float) -> dict:
    """Images/s of the train step's batch draw and augmentation alone, each batch written
    out (the barrier: a checksum alone let XLA fuse the mask's thresholding into the sum)
    and reduced to a checksum, and its ratio to the train step's ``step_s`` seconds."""

    aug_key = rng_streams(config.seed)[2]

    @jax.jit
    def input_path(data, first_step):
        def one_batch(step):
            batch = augmented_batch(data, step, config, mesh, steps_per_epoch, aug_key)
            images, masks = jax.lax.optimization_barrier(batch)
            return images.sum() + masks.sum()

        return jax.lax.map(one_batch, first_step + jnp.arange(INPUT_BATCHES_PER_CALL))

    counter = iter(range(0, 10**9, INPUT_BATCHES_PER_CALL))
    input_s = median_seconds(lambda: jax.block_until_ready(input_path(data, next(counter))),
                             steps, warmup + 1) / INPUT_BATCHES_PER_CALL
    return {"images_per_sec": round(config.batch_size / input_s, 1),
            "ratio_to_train_step": round(step_s / input_s, 1),
            "batches_per_call": INPUT_BATCHES_PER_CALL}


def profile_layers(compiled, one_call, config, runs: int, depth: int) -> dict:
    """Milliseconds per step in each model layer (``op_profile.layer_times``)."""
    layers = op_profile.layer_times(compiled, one_call, runs, depth)
    return {"runs": runs,
            "eigen_convolutions": op_profile.eigen_convolutions(compiled.as_text()),
            "layers": [{"layer": label, "ms": round(1e3 * s / config.steps_per_call, 2)}
                       for label, s in layers]}


def describe_cpu(cpu: dict) -> str:
    """``"AMD EPYC (family 25, model 17), AVX-512, 2 cores"`` from ``policy.host_cpu()``."""
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

