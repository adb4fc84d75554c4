"""Default: the inception U-Net on the built-in synthetic CT phantoms (no download needed).

    python -m lungseg_jax.train --config configs/default.py --workdir runs/default

Expected: about 1 minute on 2 CPU cores (2-core AMD EPYC Zen 4: 20 s with the persistent
compilation cache warm, 37 s compiling), validation pooled IoU 0.965 on the 6 held-out
phantoms after 10 epochs. Every study config imports this one and overrides a handful of
fields; any field can be overridden on the command line, e.g. ``--config.num_epochs=3``.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    # Seed for parameter init, epoch order and augmentation (a run is a function of it).
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    # 'incp_unet' (inception blocks) or 'conv_unet' (one conv3x3 per block).
    config.model.name = "incp_unet"
    # Filters per U-Net level (blocks output 4x these); the study's (8, 16, 32, 64).
    config.model.features = (8, 16, 32, 64)
    # BatchNorm running-average momentum. Keras' 0.99 lags the weights in short runs and
    # evaluation collapses (the study's 0.0 IoU); 0.9 tracks them within ~10 steps.
    config.model.bn_momentum = 0.9
    # Compute dtype: 'float32', or 'bfloat16' on GPU/TPU (parameters stay float32).
    config.model.dtype = "float32"
    # Op forms: 'fast' (forms of their own where XLA:CPU is slow) or 'reference' (flax's
    # and lax's plain forms; the same parameters, values within float tolerance).
    config.model.ops = "fast"

    config.data = ml_collections.ConfigDict()
    # 'synthetic' (built-in phantoms), 'folder' (DIR/2d_images + DIR/2d_masks) or 'tfds'.
    config.data.source = "synthetic"
    # Dataset folder for 'folder'; for 'tfds', the manual_dir holding the Kaggle files.
    config.data.path = ""
    # TFDS data_dir for 'tfds' ('' = ~/tensorflow_datasets).
    config.data.tfds_data_dir = ""
    # Training resolution (square); evaluation always reports at the masks' own size.
    config.data.image_size = 64
    # Training targets: each mask area-averaged to image_size, then thresholded at 0.5 (the
    # study's binary targets) or, with soft_masks, kept as the fraction of lung per pixel.
    # Binary targets at 128 cap the pooled IoU at 512 near 0.979 even for a model that
    # reproduces them exactly; soft ones keep the boundary's sub-pixel position (0.995).
    config.data.soft_masks = False
    # 1 (CT is grey) or 3 (copies, as the study fed RGB).
    config.data.channels = 1
    # Hounsfield window mapped to [0, 1]: the lung window (level -600, width 1500).
    config.data.hu_min = -1350.0
    config.data.hu_max = 150.0
    # Refuse images that do not look like Hounsfield units (8-bit, or one grey in the window).
    config.data.sanity_checks = True
    # Known label errors left out: 'builtin' (the dataset's shipped list), 'none', or a file.
    config.data.errata = "builtin"
    # Fraction of the source held out for per-epoch validation, and the split's seed.
    config.data.val_fraction = 0.1
    config.data.split_seed = 0
    # Cross-validation (``lungseg_jax.crossval`` sets it per fold): with folds = k > 0, fold
    # ``fold`` of k is the validation set instead of val_fraction; folds hold whole groups,
    # a group being the part of a slice's name that ``group_pattern`` matches (the patient).
    config.data.cv = ml_collections.ConfigDict()
    config.data.cv.folds = 0
    config.data.cv.fold = 0
    config.data.cv.group_pattern = r"^(ID_\d+)"
    config.data.synthetic = ml_collections.ConfigDict()
    config.data.synthetic.num_images = 64
    config.data.synthetic.size = 128
    config.data.synthetic.seed = 1234

    # The study's augmentation, applied inside the train step (on the device).
    config.augment = ml_collections.ConfigDict()
    config.augment.enabled = True
    config.augment.flip = True  # random horizontal and vertical flips
    config.augment.shift = 0.1  # +-10% shifts
    config.augment.zoom = 0.1  # zoom in [0.9, 1.1] per axis

    # Optimisation: Adam (Keras epsilon 1e-7), the study's batch 4.
    config.batch_size = 4
    config.eval_batch_size = 8
    config.num_epochs = 10
    config.learning_rate = 1e-3
    # Train steps per jitted call (a loop on the device; calls end early at epoch ends and
    # checkpoints, so results do not depend on it). More are faster on the CPU.
    config.steps_per_call = 8
    # 'bce' (the study's) or 'bce_dice' (BCE + soft Dice).
    config.loss = "bce"

    config.schedule = ml_collections.ConfigDict()
    # 'constant', 'cosine' (to 0 over the run) or 'snapshot' (cosine restarted each cycle).
    config.schedule.name = "snapshot"
    # Training is split in this many equal cycles; a snapshot is kept at the end of each.
    config.schedule.num_cycles = 2

    config.checkpoint = ml_collections.ConfigDict()
    # Save every this many steps (0: at the end of every epoch); snapshots are always saved.
    config.checkpoint.every_steps = 0
    # Regular checkpoints kept for resume (snapshots are kept forever on top).
    config.checkpoint.keep_latest = 2

    config.tracking = ml_collections.ConfigDict()
    # Log params, per-epoch metrics, artifacts and the exported model to MLflow
    # (pip install -e ".[mlflow]"); the store is $MLFLOW_TRACKING_URI or WORKDIR/mlflow.db.
    config.tracking.mlflow = False
    # MLflow experiment of new runs (a resumed run stays in its own; `mlflow run` picks its own).
    config.tracking.experiment = "lungseg_jax"
    return config
