"""A training run's directory, read and written by training, evaluation and serving alike.

    WORKDIR/config.json      the config the run was started with (``records``)
    WORKDIR/metrics.jsonl    one JSON record per epoch (``records``)
    WORKDIR/checkpoints/     orbax checkpoints (``checkpoints``)
    WORKDIR/checkpoints_damaged/<step>   checkpoints found damaged on resume, moved aside
    WORKDIR/split.json       the exact training and validation slices (``split_record``)
    WORKDIR/lock             held by the training run writing the workdir (``lock``)
    WORKDIR/tensorboard/     TensorBoard event files (``tracking.tensorboard``)

WORKDIR is a local path or any URI that ``etils.epath`` opens (``gs://bucket/run``:
``pip install -e ".[gcs]"``). ``trained`` restores a run's model variables.
"""
