"""The study's conv U-Net (conv3x3 -> BN -> LeakyReLU blocks), constant LR, 60 epochs.

    python -m lungseg_jax.train --config configs/conv_unet.py --workdir runs/conv \
        --config.data.path=SPLIT/train
    python -m lungseg_jax.evaluate --workdir runs/conv --data_dir SPLIT/test \
        --output runs/conv/test.json

The study's 0.0 test IoU came from BatchNorm running statistics that lag the
weights (Keras momentum 0.99); ``model.bn_momentum=0.9`` fixes it. Trains at
128x128 (evaluated at 512x512). Measured run time and result: README, "Results".
"""

from configs import incp_unet


def get_config():
    config = incp_unet.get_config()
    config.model.name = "conv_unet"
    return config
