"""Training writes TensorBoard events that agree with metrics.jsonl."""

import os

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmjax.config import base_config
from fmjax.run import rundir
from fmjax.run.rundir import EVENTS_SUBDIR
from fmjax.run.trainer import train_and_evaluate


def read_scalars(workdir):
    """(step, value) per tag, read as `tensorboard --logdir` reads them."""
    events = EventAccumulator(os.path.join(workdir, EVENTS_SUBDIR))
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def test_events_hold_every_epoch_and_the_schedule(tmp_path):
    config = base_config()
    config.image_size = 8
    config.model.hidden = 32
    config.num_epochs = 2
    config.schedule.name = "step"
    config.schedule.decay_epochs = (1,)
    train_and_evaluate(config, str(tmp_path))
    scalars = read_scalars(str(tmp_path))
    assert set(scalars) == {
        "train/loss", "train/accuracy", "test/loss", "test/accuracy", "learning_rate", "images_per_second",
    }
    records = rundir.read_metrics(str(tmp_path))
    assert [step for step, _ in scalars["test/accuracy"]] == [r["step"] for r in records] == [21, 42]
    np.testing.assert_allclose([v for _, v in scalars["test/accuracy"]], [r["test_accuracy"] for r in records], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [r["train_loss"] for r in records], rtol=1e-6)
    # Epoch 1's last step ran at 1e-3; from epoch 2 on the rate is a tenth.
    np.testing.assert_allclose([v for _, v in scalars["learning_rate"]], [1e-3, 1e-4], rtol=1e-6)
