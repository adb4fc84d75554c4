"""The study's inception U-Net, one constant-LR run (Adam 1e-3, batch 4, BCE, 60 epochs).

    python -m lungseg_jax.train --config configs/incp_unet.py --workdir runs/incp \
        --config.data.path=SPLIT/train
    python -m lungseg_jax.evaluate --workdir runs/incp --data_dir SPLIT/test \
        --output runs/incp/test.json

Trains at 128x128 (evaluated at 512x512). Not yet trained to the end here; the same
model with snapshots (``incp_unet_snapshot``) is measured in README, "Results".
"""

from configs import incp_unet_snapshot


def get_config():
    config = incp_unet_snapshot.get_config()
    config.schedule.name = "constant"
    config.schedule.num_cycles = 1
    return config
