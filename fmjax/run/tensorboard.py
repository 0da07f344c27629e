"""TensorBoard event files of a run: one point per epoch for each metric.

An event file is a TFRecord file of Event protocol buffers, written here into
a file fmjax opens itself. The package's own file writer goes through
TensorFlow's file system layer, and importing TensorFlow costs seconds; its
RecordWriter is imported through tensorboard.summary, which imports the
package's TensorFlow stand-in and with it boto3: 0.2 s of
`import fmjax.run.trainer` on 2 cores. So the records are framed here, with the
CRC-32C of google-crc32c (a C extension, under 3 ms to import).
"""

import contextlib
import os
import socket
import struct
import time

import google_crc32c
from tensorboard.compat.proto import event_pb2, summary_pb2

from fmjax.errors import UserError
from fmjax.run import files, rundir

# The first record of every event file, which readers check.
_FILE_VERSION = "brain.Event:2"


def masked_crc32c(data: bytes) -> int:
    """The CRC-32C of `data` as TFRecord stores it: rotated and offset, as a CRC of bytes
    that hold CRCs is weak."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """`data` as one TFRecord: its length (uint64), the length's masked CRC-32C, the data
    and the data's masked CRC-32C (uint32), little-endian."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class EpochSummaries:
    """Writes scalars to WORKDIR/tensorboard for `tensorboard --logdir WORKDIR`.

    Each file opens with a SessionLog.START at `first_step`, the first step this
    run trains. TensorBoard's reader takes every START after a run's first as a
    restart and drops the points an earlier file holds at that step or later:
    the epochs a killed run logged after its last checkpoint, which the resumed
    run logs again.
    """

    def __init__(self, workdir: str, first_step: int = 1):
        directory = os.path.join(workdir, rundir.EVENTS_SUBDIR)
        # A link to a folder is followed (events kept on another disk, say); a file or a
        # broken link in its place is the user's to move.
        if os.path.lexists(directory) and not os.path.isdir(directory):
            raise UserError(
                f"{directory} is not a folder; move it away, fmjax writes the run's TensorBoard events there"
            )
        with files.named_write_errors(directory):
            os.makedirs(directory, exist_ok=True)
        now = time.time()
        # A new file per run, named as TensorBoard's readers expect.
        self._path = os.path.join(
            directory, f"events.out.tfevents.{now:.6f}.{socket.gethostname()}.{os.getpid()}"
        )
        with files.named_write_errors(self._path):
            # O_EXCL: a new file, never one already there nor a link's target. O_APPEND:
            # after a record cut off (below), the next one starts at the file's end.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | os.O_CLOEXEC
            self._descriptor = os.open(self._path, flags, 0o644)
        self._size = 0  # of the whole records written
        try:
            self._add(event_pb2.Event(wall_time=now, file_version=_FILE_VERSION))
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._add(event_pb2.Event(wall_time=now, step=first_step, session_log=start))
        except BaseException:
            self.close()  # no one else holds the descriptor yet
            raise

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Adds `scalars` (name -> value) at `step`, written at once, so a killed run keeps them.

        Raises:
          fmjax.run.files.WriteError: no space left (or no permission); the file keeps
            the records before this one, whole.
        """
        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=name, simple_value=float(value))
                for name, value in scalars.items()
            ]
        )
        self._add(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def _add(self, event: event_pb2.Event) -> None:
        record = frame_record(event.SerializeToString())
        with files.named_write_errors(self._path):
            try:
                files.write_all(self._descriptor, record)
            except OSError:
                # A record cut short on a full disk would end the file for TensorBoard's
                # reader, and records written after it would never be read: cut it off.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._descriptor, self._size)
                raise
        self._size += len(record)
