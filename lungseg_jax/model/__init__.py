"""The U-Nets (``unet``), readable on their own; their operations come from ``lungseg_jax.ops``."""
