"""What every layer may use: process start-up (``runtime``, ``cli``, ``distributed``),
paths and atomic writes (``files``), fixed-size batches, segmentation metrics, and the
progress display."""
