"""The study's conv U-Net (conv3x3 -> BN -> LeakyReLU blocks), constant LR, 60 epochs.

    python -m lungseg_jax.train --config configs/conv_unet.py --workdir runs/conv \
        --config.data.path=SPLIT/train
    python -m lungseg_jax.evaluate --workdir runs/conv --data_dir SPLIT/test \
        --output runs/conv/test.json

The study's 0.0 test IoU came from BatchNorm running statistics that lag the
weights (Keras momentum 0.99); ``model.bn_momentum=0.9`` fixes it. Trains at
128x128 (evaluated at 512x512).

Measured 2026-11-25 (2-core AMD EPYC, shared with other jobs): 60 epochs in 24.9 min;
on 24 held-out real slices at 512x512, pooled IoU 0.944 (0.945 with flip TTA and
post-processing, chosen on validation; 0.968 without the one mislabeled test slice).
The study reported 0.0. README, "Results". Re-run 2026-11-26 after that day's
speed changes, on a quiet machine of the same kind: 60 epochs in 15.7 min, the same
IoUs within 0.001. Re-run 2026-11-27 on a 2-core Zen 4 (AVX-512) machine after that
day's changes: 6.0 min; pooled IoU 0.948 (0.948 chosen, 0.971 without the slice).
Later that day, with Winograd convolutions on the CPU (``lungseg_jax/winograd.py``):
5.4 min; pooled IoU 0.947 (0.948 chosen, 0.971 without the slice). 2026-11-27, eight
train steps per call (``config.steps_per_call``): 4.9 min for training and evaluation
together; pooled IoU 0.9471 final, 0.9483 chosen (final+tta+pp), as before.
2026-11-27, the convolutions in XLA's Eigen kernels (``trainer.CPU_EIGEN_CONVOLUTIONS``,
other float rounding) and the pools' per-window values computed once: 5.2 min in all;
pooled IoU 0.9424 final, 0.9432 chosen (final+tta+pp). 2026-11-27, next session, the
Winograd input transform's and the head's weight gradients written out: 5.0 min in all;
pooled IoU 0.9448 final, 0.9461 chosen (final+tta+pp).

At the study's 512x512 (``--config.data.image_size=512``), measured 2026-11-26 on one
NVIDIA H200 (three runs sharing it): 60 epochs in 1.3 min; pooled IoU 0.929, 0.952 with
two-component post-processing (chosen on validation), 0.975 without the mislabeled slice.
"""

from configs import incp_unet


def get_config():
    config = incp_unet.get_config()
    config.model.name = "conv_unet"
    return config
