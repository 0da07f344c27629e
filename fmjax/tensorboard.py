"""TensorBoard event files of a run: one point per epoch for each metric."""

import os

import tensorflow as tf

EVENTS_SUBDIR = "tensorboard"


class EpochSummaries:
    """Writes scalars to WORKDIR/tensorboard for `tensorboard --logdir WORKDIR`."""

    def __init__(self, workdir: str):
        self._writer = tf.summary.create_file_writer(os.path.join(workdir, EVENTS_SUBDIR))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Adds `scalars` (name -> value) at `step` and flushes, so a killed run keeps them."""
        with self._writer.as_default():
            for name, value in scalars.items():
                tf.summary.scalar(name, value, step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
