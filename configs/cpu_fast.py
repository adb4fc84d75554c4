"""Fast CPU recipe: the inception U-Net with snapshots in about 20 minutes on 2 cores.

    python -m lungseg_jax.train --config configs/cpu_fast.py --workdir runs/cpu_fast \
        --config.data.path=SPLIT/train
    python -m lungseg_jax.evaluate --workdir runs/cpu_fast --data_dir SPLIT/test \
        --output runs/cpu_fast/test.json

Differences from ``incp_unet_snapshot``: 24 epochs in 3 cycles, BCE + soft Dice
(optimises overlap directly, so fewer epochs reach a high IoU).
Measured run time and result: README, "Results".
"""

from configs import incp_unet_snapshot


def get_config():
    config = incp_unet_snapshot.get_config()
    config.num_epochs = 24
    config.schedule.num_cycles = 3
    config.loss = "bce_dice"
    return config
