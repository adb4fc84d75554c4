"""The benchmark: its analytical FLOP count, and one tiny run of both cases."""

import os
import sys

import pytest

from conftest import REPO
from lungseg_jax.model.unet import MODELS, UNet
from lungseg_jax.ops import policy
from lungseg_jax.perf import bench

PEERS = os.path.join(REPO, "..", "shared", "peers")


def test_flop_count_by_hand_for_a_one_level_conv_unet():
    model = UNet(block="conv", features=(2,))
    # block(2): 3x3, 1->8 at 8x8; bottleneck 3x3, 8->8 at 4x4; head 3x3, (8+8)->1 at 8x8.
    expected = 2 * (64 * 9 * 1 * 8 + 16 * 9 * 8 * 8 + 64 * 9 * 16 * 1)
    assert bench.forward_conv_flops(model, 8, 1) == expected


@pytest.mark.skipif(not os.path.exists(os.path.join(PEERS, "unet_spec.py")),
                    reason="the peer's unet_spec.py is not at ../shared/peers")
@pytest.mark.parametrize("name, peer", [("incp_unet", "incp"), ("conv_unet", "conv")])
def test_flop_count_matches_the_peer_spec(name, peer):
    sys.path.insert(0, PEERS)
    import unet_spec
    for size in (128, 512):
        assert bench.forward_conv_flops(MODELS[name](), size, 3) == \
            unet_spec.forward_flops(peer, size)


def test_tiny_benchmark_reports_every_case(tiny_config):
    train, inputs, profile = bench.run_benchmark(tiny_config, steps=2, warmup=1, num_images=8,
                                                 profile_runs=2)
    assert train["case"] == "train_step" and inputs["case"] == "input_path"
    assert profile["case"] == "step_profile" and profile["runs"] == 2
    assert profile["eigen_convolutions"] > 0  # the 8-channel ones (op_profile_test)
    labels = {layer["layer"] for layer in profile["layers"]}
    assert {"Conv_0 (forward)", "Conv_0 (backward)"} <= labels
    assert all(layer["ms"] >= 0 for layer in profile["layers"])
    assert "per layer" in bench.format_table([train, inputs, profile])
    assert "convolutions run by XLA's Eigen kernels" in bench.format_table([train, inputs, profile])
    assert train["images_per_sec"] > 0 and inputs["images_per_sec"] > 0
    # Timed in whole calls of the trainer's steps: 2 steps asked, the minimum of calls timed.
    assert train["steps_per_call"] == tiny_config.steps_per_call == 8
    assert train["timed_steps"] == bench.MIN_TIMED_CALLS * 8
    # Figures that follow from one another, to their rounding.
    batch = tiny_config.batch_size
    assert train["images_per_sec"] == pytest.approx(1e3 * batch / train["step_ms_median"],
                                                    rel=1e-2)
    assert inputs["ratio_to_train_step"] == pytest.approx(
        inputs["images_per_sec"] / train["images_per_sec"], rel=5e-2, abs=0.1)
    assert inputs["batches_per_call"] == bench.INPUT_BATCHES_PER_CALL
    assert train["compile_cold_s"] > 0 and train["compile_cached_s"] > 0
    assert train["trace_lower_s"] > 0
    assert train["achieved_gflop_per_s"] > 0 and train["xla_gflop_per_step"] > 0
    # At least the parameters and the resident images are read each step.
    assert train["xla_gbyte_per_step"] * 1e9 > 4 * 8 * tiny_config.data.image_size ** 2
    assert train["device_peak_mb"] is None  # the CPU reports no device memory
    assert train["host_cpu"] == policy.host_cpu()
    assert "img/s" in bench.format_table([train, inputs])


def test_host_line_names_the_cpu_or_says_it_is_not_reported():
    cpu = {"name": "AMD EPYC", "family": "25", "model": "17", "avx512": True}
    assert bench.describe_cpu(cpu).startswith("AMD EPYC (family 25, model 17), AVX-512, ")
    assert "no AVX-512" in bench.describe_cpu({**cpu, "avx512": False})
    assert bench.describe_cpu({}).startswith("CPU not reported, ")


def test_too_few_resident_images_for_a_batch_is_an_error_naming_the_flag(tiny_config):
    with pytest.raises(ValueError, match="num_images=2"):
        bench.run_benchmark(tiny_config, steps=1, warmup=0, num_images=2)


def test_config_overrides_of_the_fields_bench_flags_own_are_found():
    argv = ["bench", "--config.batch_size=8", "--config.seed=3", "--config.model.dtype",
            "--image_size=64"]
    assert bench.owned_field_overrides(argv) == [("--config.batch_size=8", "batch_size"),
                                                 ("--config.model.dtype", "model.dtype")]
