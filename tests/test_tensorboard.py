"""Training writes TensorBoard events that agree with metrics.jsonl, as TensorBoard's own
reader reads them, CRCs checked; and without importing TensorBoard's writer."""

import errno
import io
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.summary.writer.record_writer import RecordWriter

from fmjax.config import base_config
from fmjax.errors import UserError
from fmjax.run import files, rundir
from fmjax.run.rundir import EVENTS_SUBDIR
from fmjax.run.tensorboard import EpochSummaries, frame_record
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


def two_epochs_of_summaries(workdir):
    """The event file of two epochs' scalars, written as training writes them."""
    summaries = EpochSummaries(str(workdir))
    summaries.write(21, {"train/loss": 0.5, "test/accuracy": 0.25})
    summaries.write(42, {"train/loss": 0.125, "test/accuracy": 0.75})
    summaries.close()
    (path,) = (workdir / EVENTS_SUBDIR).glob("events.out.tfevents.*")
    return path


def test_the_records_open_with_tensorboards_reader(tmp_path):
    two_epochs_of_summaries(tmp_path)
    assert read_scalars(str(tmp_path)) == {
        "train/loss": [(21, 0.5), (42, 0.125)],
        "test/accuracy": [(21, 0.25), (42, 0.75)],
    }


def test_tensorboards_reader_stops_at_a_record_with_a_flipped_byte(tmp_path):
    path = two_epochs_of_summaries(tmp_path)
    data = bytearray(path.read_bytes())
    # The low byte of epoch 2's 0.75: still a valid Event, read as 0.75000006 were the CRC not checked.
    data[data.rindex(struct.pack("<f", 0.75))] ^= 1
    path.write_bytes(data)
    assert read_scalars(str(tmp_path)) == {"train/loss": [(21, 0.5)], "test/accuracy": [(21, 0.25)]}


def test_a_full_disk_mid_record_is_a_write_error_and_the_file_keeps_whole_records(tmp_path, monkeypatch):
    summaries = EpochSummaries(str(tmp_path))
    summaries.write(21, {"train/loss": 0.5})
    (path,) = (tmp_path / EVENTS_SUBDIR).glob("events.out.tfevents.*")
    whole = path.read_bytes()
    write = os.write

    def full_after_ten_bytes(descriptor, data):
        # As a disk fills: a short write, then ENOSPC.
        if len(data) > 10:
            return write(descriptor, data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", full_after_ten_bytes)
        with pytest.raises(files.WriteError, match=f"^cannot write {path}: no space left on the device$"):
            summaries.write(42, {"train/loss": 0.125})
    assert path.read_bytes() == whole
    # With space again, a record written after it is read.
    summaries.write(63, {"train/loss": 0.25})
    summaries.close()
    assert read_scalars(str(tmp_path)) == {"train/loss": [(21, 0.5), (63, 0.25)]}


def test_records_are_framed_byte_for_byte_as_tensorboards_writer_frames_them():
    for data in (b"", b"x", bytes(range(256)) * 5):
        buffer = io.BytesIO()
        RecordWriter(buffer).write(data)
        assert frame_record(data) == buffer.getvalue()


def test_importing_the_trainer_leaves_out_tensorboards_writer_and_boto3():
    # tensorboard.summary imports a TensorFlow stand-in and boto3, 0.2 s of every start.
    code = (
        "import sys, fmjax.run.trainer\n"
        "print(sorted(m for m in ('tensorboard.summary', 'tensorboard.compat.tensorflow_stub', 'boto3', "
        "'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind", ["file", "broken link"])
def test_a_file_or_a_broken_link_in_place_of_the_events_folder_is_one_line(tmp_path, kind):
    events = tmp_path / EVENTS_SUBDIR
    if kind == "file":
        events.write_text("notes")
    else:
        events.symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=f"^{events} is not a folder; move it away"):
        EpochSummaries(str(tmp_path))
    assert (events.read_text() == "notes") if kind == "file" else not (tmp_path / "gone").exists()


def test_a_link_to_a_folder_holds_the_events(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / EVENTS_SUBDIR).symlink_to(elsewhere)
    summaries = EpochSummaries(str(tmp_path / "run"))
    summaries.write(1, {"loss": 0.5})
    summaries.close()
    assert [name.startswith("events.out.tfevents.") for name in os.listdir(elsewhere)] == [True]


def test_a_resumed_run_replaces_the_points_a_killed_run_logged_after_its_checkpoint(tmp_path, monkeypatch):
    """Killed after epoch 2's line and before its save: the resumed run logs epoch 2 again."""
    from fmjax.run import checkpoint as ckpt

    class Killed(Exception):
        pass

    save = ckpt.save_checkpoint

    def killed_at_step_42(manager, state, meta):
        if int(state.step) == 42:
            raise Killed
        save(manager, state, meta)

    config = base_config()
    config.image_size = 8
    config.model.hidden = 32
    config.num_epochs = 3
    with monkeypatch.context() as patched:
        patched.setattr(ckpt, "save_checkpoint", killed_at_step_42)
        with pytest.raises(Killed):
            train_and_evaluate(config, str(tmp_path))
    assert [step for step, _ in read_scalars(str(tmp_path))["test/accuracy"]] == [21, 42]
    train_and_evaluate(config, str(tmp_path))
    scalars = read_scalars(str(tmp_path))
    records = rundir.read_metrics(str(tmp_path))
    assert len(list((tmp_path / EVENTS_SUBDIR).glob("events.out.tfevents.*"))) == 2
    assert [step for step, _ in scalars["test/accuracy"]] == [r["step"] for r in records] == [21, 42, 63]
    np.testing.assert_allclose([v for _, v in scalars["test/accuracy"]], [r["test_accuracy"] for r in records], rtol=1e-6)
