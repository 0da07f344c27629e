"""checkpoint_min_seconds: an epoch's end saves once the interval has passed; the last step and a stop always save."""

import functools
import json
import os

import jax
import numpy as np
import pytest
from conftest import shipped_base_config, sigterm_from

from fmjax.config import base_config
from fmjax.run import trainer
from fmjax.run.checkpoint import checkpoint_dir
from fmjax.run.pacing import CheckpointClock

# 1347 training digits in batches of 64: 21 steps an epoch.
STEPS_PER_EPOCH = 21


def tiny(**overrides):
    config = base_config()
    config.image_size = 8
    config.model.hidden = 32
    config.batch_size = 64
    config.num_epochs = 3
    config.update(overrides)
    return config


def saved_steps(workdir):
    return sorted(int(name) for name in os.listdir(checkpoint_dir(str(workdir))) if name.isdigit())


def logged_epochs(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as lines:
        return [json.loads(line)["epoch"] for line in lines]


def final_params(workdir):
    from fmjax.run.checkpoint_reads import restore_params

    return jax.tree.leaves(restore_params(str(workdir)))


class TickingClock:
    """A clock that moves on by `tick` seconds at every reading."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_the_clock_saves_once_the_interval_has_passed_since_the_last_save():
    now = [100.0]
    clock = CheckpointClock(60.0, clock=lambda: now[0])
    assert not clock.epoch_end_saves()
    now[0] = 159.9
    assert not clock.epoch_end_saves()
    now[0] = 160.0
    assert clock.epoch_end_saves()
    clock.saved()
    now[0] = 200.0
    assert not clock.epoch_end_saves()
    assert CheckpointClock(0.0, clock=lambda: now[0]).epoch_end_saves()
    assert shipped_base_config().checkpoint_min_seconds == 60.0


def test_a_run_shorter_than_the_interval_saves_its_last_step_and_logs_every_epoch(tmp_path):
    trainer.train_and_evaluate(tiny(checkpoint_min_seconds=1e9), str(tmp_path))
    assert saved_steps(tmp_path) == [3 * STEPS_PER_EPOCH]
    assert logged_epochs(tmp_path) == [1, 2, 3]


def test_an_epochs_end_saves_when_the_interval_has_passed(tmp_path, monkeypatch):
    # Readings at 35 s apart: the start, epoch 1 (35 s: no), epoch 2 (70 s: saves, and reads
    # the clock: 105 s), epoch 3 (140 s, 35 s after the save: no), epoch 4 (the last step).
    monkeypatch.setattr(trainer, "CheckpointClock", functools.partial(CheckpointClock, clock=TickingClock(35.0)))
    trainer.train_and_evaluate(tiny(checkpoint_min_seconds=60.0, num_epochs=4), str(tmp_path))
    assert saved_steps(tmp_path) == [2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH]
    assert logged_epochs(tmp_path) == [1, 2, 3, 4]


def test_a_stop_saves_whatever_the_interval_and_the_resume_is_bit_identical(tmp_path, monkeypatch):
    config = tiny(checkpoint_min_seconds=1e9, host_check_seconds=1e9)
    trainer.train_and_evaluate(config, str(tmp_path / "whole"))
    # With host checks this far apart, the second epoch runs in one call: the stop comes at its end.
    stop_at = 2 * STEPS_PER_EPOCH

    with monkeypatch.context() as patched:
        patched.setattr(trainer, "watch_for_sigterm", sigterm_from(stop_at))
        with pytest.raises(trainer.Preempted) as stopped:
            trainer.train_and_evaluate(config.copy_and_resolve_references(), str(tmp_path / "stopped"))
    assert stopped.value.step == stop_at and saved_steps(tmp_path / "stopped") == [stop_at]
    # Epoch 1's end did not save; the stop did, with epoch 1's line and epoch 2's sums.
    assert logged_epochs(tmp_path / "stopped") == [1]
    trainer.train_and_evaluate(config.copy_and_resolve_references(), str(tmp_path / "stopped"))
    assert saved_steps(tmp_path / "stopped") == [stop_at, 3 * STEPS_PER_EPOCH]
    assert logged_epochs(tmp_path / "stopped") == [1, 2, 3]
    for whole, resumed in zip(final_params(tmp_path / "whole"), final_params(tmp_path / "stopped")):
        np.testing.assert_array_equal(whole, resumed)
