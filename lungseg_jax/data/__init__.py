"""Data: slices and their folders (``slices``), the synthetic phantoms (``phantoms``),
preprocessing (``preprocess``), splits (``splits``), the configured source (``sources``),
the dataset's known label errors (``errata``), the TFDS builder (``tfds_lungs``) and the
in-step augmentation (``augment``)."""
