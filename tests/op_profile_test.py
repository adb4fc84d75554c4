"""op_profile: labels from HLO metadata, and per-layer times of a real profiled run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lungseg_jax.perf import op_profile

HLO = """HloModule jit_step

%fused_computation.3 (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  ROOT %mul.1 = f32[4]{0} multiply(%param_0, %param_0), metadata={op_name="jit(step)/transpose(jvp(UNet))/Block_2/Conv_0/mul"}
}

ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %conv.7 = f32[4]{0} add(%p, %p), metadata={op_name="jit(step)/jvp(UNet)/Block_1/Conv_0/add"}
  %loop_fusion = f32[4]{0} fusion(%conv.7), kind=kLoop, calls=%fused_computation.3
  %up.2 = f32[4]{0} add(%loop_fusion, %p), metadata={op_name="jit(step)/jvp(UNet)/broadcast_in_dim"}
  ROOT %adam.1 = f32[4]{0} add(%up.2, %p), metadata={op_name="jit(step)/mul"}
}
"""


def test_op_name_label():
    name = "jit(step)/transpose(jvp(UNet))/ConvBlock_5/ConvBNAct_0/Conv_0/conv"
    assert op_profile.op_name_label(name, 1) == "ConvBlock_5 (backward)"
    assert op_profile.op_name_label(name, 2) == "ConvBlock_5/ConvBNAct_0 (backward)"
    assert op_profile.op_name_label("jit(step)/jvp(UNet)/Conv_0/conv", 3) == "Conv_0 (forward)"
    assert op_profile.op_name_label("jit(step)/jvp(UNet)/reshape", 1) == "UNet itself (forward)"
    assert op_profile.op_name_label("jit(step)/adam/mul", 1) == op_profile.OUTSIDE_MODEL
    assert op_profile.op_name_label("", 1) == op_profile.UNRECORDED


def test_layer_labels_of_entry_instructions_fusions_by_their_root():
    assert op_profile.layer_labels(HLO, depth=2) == {
        "p": op_profile.UNRECORDED,
        "conv.7": "Block_1/Conv_0 (forward)",
        "loop_fusion": "Block_2/Conv_0 (backward)",
        "up.2": "UNet itself (forward)",
        "adam.1": op_profile.OUTSIDE_MODEL,
    }


LOOP_HLO = """HloModule jit_steps

%body.1 (s: f32[4]) -> f32[4] {
  %s = f32[4]{0} parameter(0)
  ROOT %conv.9 = f32[4]{0} add(%s, %s), metadata={op_name="jit(steps)/while/body/jvp(UNet)/Block_0/Conv_0/add"}
}

%cond.2 (c: f32[4]) -> pred[] {
  %c = f32[4]{0} parameter(0)
  ROOT %lt.1 = pred[] constant(true)
}

ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %while.3 = f32[4]{0} while(%p), condition=%cond.2, body=%body.1, metadata={op_name="jit(steps)/while"}
}
"""


def test_layer_labels_of_a_loop_are_its_body_s_not_the_loop_s():
    """The train steps run in a loop: its body's operations are labelled, the loop itself
    (whose time is its body's) is not."""
    assert op_profile.layer_labels(LOOP_HLO) == {
        "p": op_profile.UNRECORDED,
        "conv.9": "Block_0 (forward)",
        "s": op_profile.UNRECORDED,
        "c": op_profile.UNRECORDED,
        "lt.1": op_profile.UNRECORDED,
    }


def test_layer_labels_rejects_text_without_entry():
    with pytest.raises(ValueError, match="ENTRY"):
        op_profile.layer_labels("HloModule empty")


class TwoConvs(nn.Module):
    """A large convolution (Conv_0) and a tiny one (Conv_1) on separate inputs."""

    @nn.compact
    def __call__(self, large, small):
        return (jnp.sum(jnp.tanh(nn.Conv(64, (3, 3))(large)))
                + jnp.sum(jnp.tanh(nn.Conv(2, (3, 3))(small))))


def test_layer_times_put_the_large_convolution_first():
    model = TwoConvs()
    keys = jax.random.split(jax.random.key(0), 3)
    large = jax.random.normal(keys[0], (2, 48, 48, 64))
    small = jax.random.normal(keys[1], (1, 4, 4, 2))
    params = model.init(keys[2], large, small)
    grad = jax.jit(jax.grad(model.apply, argnums=(0, 1, 2)))
    compiled = grad.lower(params, large, small).compile()

    times = dict(op_profile.layer_times(compiled, lambda: jax.block_until_ready(
        compiled(params, large, small)), runs=2))
    for direction in ("forward", "backward"):
        assert times[f"Conv_0 ({direction})"] > times.get(f"Conv_1 ({direction})", 0.0)
    assert times["Conv_0 (forward)"] > 0 and times["Conv_0 (backward)"] > 0


def test_layer_times_fails_clearly_when_nothing_ran():
    compiled = jax.jit(lambda x: jnp.tanh(x) * 2).lower(jnp.ones(8)).compile()
    with pytest.raises(RuntimeError, match="recorded none"):
        op_profile.layer_times(compiled, lambda: None, runs=1)


def conv_program(channels):
    x, w = jnp.ones((1, 16, 16, channels)), jnp.ones((3, 3, channels, channels))
    return jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(x, w).compile()


def test_eigen_convolutions_counts_xla_s_own_convolutions_not_ynnpack_s():
    # XLA:CPU hands a convolution of more than 16 channels to YNNPACK, in a fusion.
    assert op_profile.eigen_convolutions(conv_program(8).as_text()) == 1
    assert op_profile.eigen_convolutions(conv_program(32).as_text()) == 0
    assert op_profile.eigen_convolutions(HLO) == 0
    in_a_fusion = HLO.replace("multiply(%param_0, %param_0)", "convolution(%param_0, %param_0)")
    assert op_profile.eigen_convolutions(in_a_fusion) == 0
    assert op_profile.eigen_convolutions(HLO.replace("add(%p, %p)", "convolution(%p, %p)")) == 1
