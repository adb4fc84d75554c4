"""The operations the U-Nets are built from, in two sets behind one small API.

'fast': forms of their own where XLA's CPU backend is slow (``conv``, ``winograd``,
``pooling``, ``upsampling``, ``batchnorm``; ``policy`` decides per host and backend where
each pays off). 'reference': flax's and lax's plain forms (``reference``), what the fast
ones are tested against. Both give the same parameters and, within float tolerance, the
same values and gradients. ``forms(name)`` picks one (``config.model.ops``).
"""

import dataclasses
import functools
from typing import Callable


@dataclasses.dataclass(frozen=True)
class OpSet:
    """One set of the U-Net's operations.

    * ``Conv(features, kernel_size, dtype, add_bias)(*parts)``: 'same' convolution of the
      channel concatenation of ``parts`` (layer inputs, or ``upsample(x)``).
    * ``BatchNormLeakyReLU(momentum=, epsilon=, slope=, dtype=, name=)(x,
      use_running_average, input_bias=None)``.
    * ``max_pool(x)``: 2x2, stride 2. ``max_pool_same(part)``: 2x2, stride 1, 'same'.
    * ``upsample(x)``: nearest-neighbour 2x, as a layer input (the fast set marks it
      without building it).
    * ``materialize(x)``: ``x`` computed once, where the backend would recompute it in
      each consumer (identity in the reference set).
    """

    name: str
    Conv: type
    BatchNormLeakyReLU: type
    max_pool: Callable
    max_pool_same: Callable
    upsample: Callable
    materialize: Callable


def _fast() -> OpSet:
    from lungseg_jax.ops import batchnorm, conv, policy, pooling, upsampling

    return OpSet("fast", conv.Conv, batchnorm.BatchNormLeakyReLU, pooling.max_pool_2x2,
                 pooling.max_pool_2x2_same_of, upsampling.Upsampled,
                 policy.materialized_on_cpu)


def _reference() -> OpSet:
    from lungseg_jax.ops import reference

    return OpSet("reference", reference.Conv, reference.BatchNormLeakyReLU,
                 reference.max_pool_2x2, reference.max_pool_2x2_same, reference.upsample_2x,
                 reference.identity)


SETS = {"fast": _fast, "reference": _reference}


@functools.cache
def forms(name: str) -> OpSet:
    """The op set named ``name`` ('fast' or 'reference')."""
    if name not in SETS:
        raise ValueError(f"unknown op set {name!r}; expected one of {sorted(SETS)}")
    return SETS[name]()
