"""Nothing lost: stopped runs resume to the same bits, and what must not happen does not.

A run killed with SIGKILL, or stopped with SIGTERM, and started again with
the same command ends with params and optimizer state bit-identical (on CPU)
to a run that never stopped, and with the same metrics.jsonl. That run saved
only at epoch ends: when checkpoints are written changes nothing else. A NaN
stops training before it is saved, a damaged newest checkpoint gives way to
the one before, and a second training on a busy workdir is refused.

The stopped runs are real train.py processes on the same eight CPU devices
as this one (conftest's XLA_FLAGS, inherited), resumed in this process. The
parent polls fmjax's list of complete checkpoints (a step is listed only
once its write is complete). With a checkpoint every step, each step waits
for the previous write, so the child is at most a few steps past the one
that triggered the signal, far from the run's end; and wherever it stops,
the resumed result must be the same, which keeps the test deterministic.

The kill points are drawn from a seeded generator: FMJAX_RESUME_SEED (0
unless set) replays a failure, whose message gives the seed and the points.
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
from conftest import (
    CHILD_ENV,
    LAST_STEP,
    STEPS_PER_EPOCH,
    TINY,
    checkpoint_arrays,
    damage_checkpoint,
    evaluate_tiny,
    newest_step,
    saved_steps,
    train_py,
)
from conftest import train_tiny as train

from fmjax import cli
from fmjax.run import rundir, trainer
from fmjax.run.lock import hold_workdir

EVERY_STEP = "--config.checkpoint_every_steps=1"
ONLY_AT_EPOCH_ENDS = "--config.checkpoint_every_steps=0"
SEED = int(os.environ.get("FMJAX_RESUME_SEED", "0"))


def metrics_without_speed(workdir):
    return [{k: v for k, v in r.items() if k != "images_per_second"} for r in rundir.read_metrics(str(workdir))]


def assert_same_run(workdir, reference):
    arrays, expected = checkpoint_arrays(workdir, LAST_STEP), checkpoint_arrays(reference, LAST_STEP)
    assert arrays.keys() == expected.keys()
    assert any("opt_state" in key for key in arrays)
    for key in expected:
        np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)
    assert metrics_without_speed(workdir) == metrics_without_speed(reference)


def signal_after(workdir, step, signum, *extra):
    """Runs train.py until a checkpoint at `step` or later is complete, then sends `signum`.

    Returns:
      (exit status, stdout, stderr) of the child.
    """
    child = subprocess.Popen(
        train_py(*TINY, "--workdir", str(workdir), *extra),
        env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 180
    while newest_step(workdir) < step and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signum)
    out, err = child.communicate(timeout=180)
    assert child.returncode != 0, f"train.py ended before step {step}: {err[-2000:]}"
    return child.returncode, out, err


def resumed_step(output):
    found = re.findall(r"resumed from step (\d+)", output)
    assert len(found) == 1, output
    return int(found[0])


@pytest.fixture
def reference(tiny_run):
    """The run that never stopped: it saved only at epoch ends, which changes nothing else."""
    return tiny_run


def test_killed_twice_then_stopped_then_resumed_equals_the_run_never_stopped(tmp_path, reference, capsys):
    # Drawn up front, so that the seed alone replays them; each is raised to
    # at least 3 steps past the newest checkpoint when the child starts.
    rng = np.random.default_rng(SEED)
    first_kill = int(rng.integers(2, 12))  # inside epoch 1
    second_draw = int(rng.integers(first_kill + 3, STEPS_PER_EPOCH + 6))  # up to early epoch 2
    sigterm_draw = int(rng.integers(STEPS_PER_EPOCH + 2, LAST_STEP - 8))  # inside epoch 2
    points = {"seed": SEED, "first SIGKILL": first_kill}

    def replay():
        return f"replay with FMJAX_RESUME_SEED={SEED}: signals after steps {points}"

    # Run 1: SIGKILL inside epoch 1.
    status, _, err = signal_after(tmp_path, first_kill, signal.SIGKILL, EVERY_STEP)
    assert status == -signal.SIGKILL, (replay(), err[-2000:])

    # Run 2: resumes inside epoch 1; SIGKILL a few steps on.
    second_kill = points["second SIGKILL"] = max(second_draw, newest_step(tmp_path) + 3)
    status, out, err = signal_after(tmp_path, second_kill, signal.SIGKILL, EVERY_STEP)
    assert status == -signal.SIGKILL, (replay(), err[-2000:])
    first_resume = resumed_step(out)
    assert first_kill <= first_resume < STEPS_PER_EPOCH, (replay(), first_resume)

    # Run 3: SIGTERM inside epoch 2; it saves at the next step boundary and says where.
    sigterm_after = points["SIGTERM"] = max(sigterm_draw, newest_step(tmp_path) + 3)
    status, out, err = signal_after(tmp_path, sigterm_after, signal.SIGTERM, EVERY_STEP)
    assert status == cli.EXIT_PREEMPTED == 143, (replay(), err[-2000:])
    assert second_kill <= resumed_step(out), replay()
    last_line = err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"preempted: stopped by SIGTERM after saving step (\d+) in (\S+); run the same command to resume",
        last_line,
    )
    assert match, (replay(), last_line)
    stopped_at = int(match.group(1))
    assert sigterm_after <= stopped_at < LAST_STEP, (replay(), stopped_at)
    assert match.group(2) == os.path.join(str(tmp_path), "checkpoints")
    assert newest_step(tmp_path) == stopped_at, replay()

    capsys.readouterr()
    assert train(tmp_path, EVERY_STEP) == 0, replay()  # the same command, now to the end
    assert resumed_step(capsys.readouterr().out) == stopped_at, replay()
    assert_same_run(tmp_path, reference)


def test_a_stop_at_an_epochs_last_step_leaves_its_evaluation_to_the_resumed_run(
    tmp_path, reference, monkeypatch, capsys
):
    @contextlib.contextmanager
    def sigterm_during_step_21():
        yield lambda step: step == STEPS_PER_EPOCH

    monkeypatch.setattr(trainer, "watch_for_sigterm", sigterm_during_step_21)
    assert train(tmp_path, ONLY_AT_EPOCH_ENDS) == cli.EXIT_PREEMPTED
    assert f"preempted: stopped by SIGTERM after saving step {STEPS_PER_EPOCH} in" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "metrics.jsonl")  # epoch 1 was not evaluated

    monkeypatch.undo()
    assert train(tmp_path, ONLY_AT_EPOCH_ENDS) == 0
    assert f"resumed from step {STEPS_PER_EPOCH} in {tmp_path / 'checkpoints'} (epoch 1, batch 21)" in (
        capsys.readouterr().out
    )
    assert_same_run(tmp_path, reference)


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_resumes(tiny_run_copy, reference, capsys):
    workdir = tiny_run_copy
    damage_checkpoint(workdir, LAST_STEP, arrays_only=True)  # its arrays fail to read, its metadata does not

    capsys.readouterr()
    assert train(workdir, ONLY_AT_EPOCH_ENDS) == 0
    out = capsys.readouterr().out.splitlines()
    warning = [line for line in out if line.startswith("warning:")]
    assert len(warning) == 1, out
    assert warning[0].startswith(f"warning: checkpoint step {LAST_STEP} in {workdir / 'checkpoints'} is unreadable (")
    assert warning[0].endswith(f"setting it aside in {workdir / 'damaged_checkpoints'}")
    assert resumed_step("\n".join(out)) == STEPS_PER_EPOCH
    assert os.path.isdir(workdir / "damaged_checkpoints" / str(LAST_STEP))
    # Epoch 2 was trained and step 42 saved again, the same as before.
    assert_same_run(workdir, reference)


def test_evaluating_a_damaged_step_is_one_line(tiny_run_copy, capsys):
    workdir = tiny_run_copy
    damage_checkpoint(workdir, LAST_STEP)  # every file of the step cut short
    capsys.readouterr()
    assert evaluate_tiny(workdir) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: the checkpoint at step {LAST_STEP} in {workdir / 'checkpoints'} is damaged (")
    assert err[0].endswith(f"pass --step with one of {STEPS_PER_EPOCH}")


def test_a_diverging_run_stops_naming_the_step_before_saving_it(tmp_path, capsys):
    diverging = ["--config.optimizer.name=sgd", "--config.learning_rate=1e30"]
    assert train(tmp_path, EVERY_STEP, *diverging) == cli.EXIT_DIVERGED == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("error:")] == [
        "error: the loss, gradients or updated params became NaN or Inf at step 2; "
        f"the newest checkpoint, step 1 in {tmp_path / 'checkpoints'}, is finite; "
        "lower config.learning_rate (or set config.halt_on_nonfinite=False)"
    ]
    assert saved_steps(tmp_path) == [1]
    assert all(np.isfinite(a).all() for a in checkpoint_arrays(tmp_path, 1).values())


def test_a_second_training_on_a_busy_workdir_is_refused(tmp_path, capsys):
    # A run killed with SIGKILL frees the lock: the kill test resumes after two.
    with hold_workdir(str(tmp_path)):
        assert train(tmp_path) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: another training (pid {os.getpid()} on {socket.gethostname()}) is running in "
        f"{tmp_path}; wait for it to finish, or pass another --workdir"
    ]
    assert os.listdir(tmp_path / "checkpoints") == []


def test_a_training_whose_checkpoint_folder_links_to_a_busy_one_is_refused(tmp_path, capsys):
    # Its checkpoint manager would delete the busy run's save in flight (a
    # temporary folder) and prune its steps.
    busy, linked = tmp_path / "busy", tmp_path / "linked"
    in_flight = busy / "checkpoints" / "3.orbax-checkpoint-tmp-1"
    in_flight.mkdir(parents=True)
    with hold_workdir(str(busy)):
        linked.mkdir()
        (linked / "checkpoints").symlink_to(busy / "checkpoints")
        assert train(linked) == cli.EXIT_USER_ERROR
        assert in_flight.is_dir()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: another training is writing checkpoints in {linked / 'checkpoints'} (linked to "
        f"{busy / 'checkpoints'}); wait for it to finish, or give this run a checkpoint folder of its own"
    ]
    assert os.listdir(busy / "checkpoints") == ["3.orbax-checkpoint-tmp-1"]
