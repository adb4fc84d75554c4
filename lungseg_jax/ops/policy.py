"""Every host- and backend-dependent choice of the fast op forms, in one place.

The fast forms (``conv``, ``winograd``, ``pooling``, ``upsampling``, ``batchnorm``) ask
this module where each of their forms pays off; the trainer asks it for XLA:CPU's
compiler options. The host's CPU is probed lazily, at the first trace that needs it,
never at import. Each rule's why and measured gain: docs/performance.md.
"""

import functools

import jax
import jax.numpy as jnp

# ----------------------------------------------------------------------------- the host


@functools.cache
def host_cpu(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The host's CPU as Linux reports it for its first processor: ``name``, ``family``,
    ``model`` (strings) and ``avx512`` (the ``avx512f`` flag); {} where that cannot be
    read (not Linux). Read once, on first use."""
    try:
        with open(cpuinfo) as f:
            first = f.read().split("\n\n")[0]
    except OSError:
        return {}
    fields = dict((key.strip(), value.strip()) for key, value in
                  (line.split(":", 1) for line in first.splitlines() if ":" in line))
    return {"name": fields.get("model name", ""), "family": fields.get("cpu family", ""),
            "model": fields.get("model", ""),
            "avx512": "avx512f" in fields.get("flags", "").split()}


def host_has_avx512() -> bool:
    """Whether the host CPU has AVX-512: XLA:CPU's own convolution gradients are fast
    there, and Winograd's products beat its direct convolutions (measured on AVX-512
    hosts only; AVX2 hosts keep the forms measured there)."""
    return host_cpu().get("avx512", False)


# ----------------------------------------------------------------------------- convolutions

FEW_INPUT_CHANNELS = 3  # the first layer's: CT's 1, or the peer's and the study's RGB copies


def products_pay_off(kernel_shape) -> bool:
    """Where the CPU forward pass is ``conv.conv_as_products``: kernels larger than 1x1
    that read at most ``FEW_INPUT_CHANNELS`` channels."""
    kh, kw, cin, _ = kernel_shape
    return cin <= FEW_INPUT_CHANNELS and kh * kw > 1


def tap_product_pays_off(kernel_shape) -> bool:
    """Where the CPU convolution is ``conv.conv_as_tap_product``: no more outputs of all
    the taps together than input channels (the U-Net's last layer: 9 from 32)."""
    kh, kw, cin, cout = kernel_shape
    return kh * kw * cout <= cin


def gemm_pays_off(kernel_shape) -> bool:
    """Where the CPU weight gradient is ``conv.weight_grad_gemm``: on hosts without
    AVX-512, 1x1 kernels (no copies) and kernels between different channel counts
    (between equal counts the tap copies cost more than they save)."""
    kh, kw, cin, cout = kernel_shape
    return not host_has_avx512() and (kh == kw == 1 or cin != cout)


# Where Winograd's transformed tensors (4x the input, 4x the output) cost less than they
# save: images of at least 32x32, channel products of at least 2048, bounded tensors.
WINOGRAD_MIN_PIXELS = 32 * 32
WINOGRAD_MIN_CHANNEL_PRODUCT = 2048
WINOGRAD_MAX_INPUT = 2**21
WINOGRAD_MAX_OUTPUT = 2**20


def winograd_pays_off(x_shape, kernel_shape, dtype=jnp.float32) -> bool:
    """Where the CPU convolution is ``winograd.conv3x3``: on AVX-512 hosts, in float32
    only (in bfloat16 its transforms would round where the direct convolution
    accumulates in float32), for known sizes only (not an exported model's symbolic
    batch), within the ``WINOGRAD_*`` bounds (the traced, global batch's)."""
    kh, kw, cin, cout = kernel_shape
    if not all(isinstance(d, int) for d in x_shape[:3]) or not host_has_avx512():
        return False
    n, h, w = x_shape[:3]
    return ((kh, kw) == (3, 3) and h % 2 == 0 and w % 2 == 0 and h * w >= WINOGRAD_MIN_PIXELS
            and cin * cout >= WINOGRAD_MIN_CHANNEL_PRODUCT
            and n * h * w * cin <= WINOGRAD_MAX_INPUT and n * h * w * cout <= WINOGRAD_MAX_OUTPUT
            and dtype == jnp.float32)


# ----------------------------------------------------------------------------- buffers


def materialized_on_cpu(x):
    """``x``, computed once into a buffer of its own on the CPU (``own_buffer``), where
    XLA:CPU fuses a value's computation into each of its consumers and so computes it again
    in each. Other backends: XLA's choice."""
    return jax.lax.platform_dependent(x, cpu=own_buffer, default=lambda x: x)


def own_buffer(x):
    """``x``, out of a conditional whose two branches both return it. XLA runs a
    conditional as an operation of its own, so its operand and result are buffers no
    fusion reaches into (nor, through autodiff's conditional, the gradient's). An
    optimization barrier alone does not do it on the CPU: XLA:CPU removes barriers before
    fusing. The predicate (always false) and the false branch go through barriers so that
    XLA cannot fold the conditional away, which it does when the predicate is a constant or
    the branches are the same."""
    never = jax.lax.optimization_barrier(jnp.array(False))
    return jax.lax.cond(never, lambda x: x, jax.lax.optimization_barrier, x)


# ----------------------------------------------------------------------------- compiler

# XLA:CPU's memory-optimising scheduler: less scratch memory for large steps, a few
# percent slower for small ones.
CPU_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
MEMORY_SCHEDULER_MIN_PIXELS = 256 * 256 * 4
# LLVM level 1 for XLA:CPU's generated kernels: faster cold compiles, the same step.
CPU_CODEGEN = {"xla_backend_optimization_level": 1}
# This jaxlib's YNNPACK library calls without the convolutions, which then run in XLA's
# Eigen kernels: faster for models whose convolutions run one after another.
CPU_EIGEN_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def train_step_compiler_options(platform: str, pixels_per_device: int,
                                parallel_branches: bool) -> dict | None:
    """XLA options for the train step: on the CPU ``CPU_CODEGEN``, ``CPU_MEMORY_SCHEDULER``
    from ``MEMORY_SCHEDULER_MIN_PIXELS`` pixels per device, and ``CPU_EIGEN_CONVOLUTIONS``
    for models without convolutions that run side by side; XLA's defaults elsewhere."""
    if platform != "cpu":
        return None
    options = dict(CPU_CODEGEN)
    if pixels_per_device >= MEMORY_SCHEDULER_MIN_PIXELS:
        options.update(CPU_MEMORY_SCHEDULER)
    if not parallel_branches:
        options.update(CPU_EIGEN_CONVOLUTIONS)
    return options
