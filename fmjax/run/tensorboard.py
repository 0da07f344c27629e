"""TensorBoard event files of a run: one point per epoch for each metric.

An event file is a TFRecord file of Event protocol buffers, written here into
a file fmjax opens itself. The package's own file writer goes through
TensorFlow's file system layer, and importing TensorFlow costs seconds; its
RecordWriter is imported through tensorboard.summary, which imports the
package's TensorFlow stand-in and with it boto3: 0.2 s of
`import fmjax.run.trainer` on 2 cores. So the records are framed here, with the
CRC-32C of google-crc32c (a C extension, 3 ms to import).
"""

import os
import socket
import struct
import time

import google_crc32c
from tensorboard.compat.proto import event_pb2, summary_pb2

from fmjax.run import rundir

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
    """Writes scalars to WORKDIR/tensorboard for `tensorboard --logdir WORKDIR`."""

    def __init__(self, workdir: str):
        directory = os.path.join(workdir, rundir.EVENTS_SUBDIR)
        os.makedirs(directory, exist_ok=True)
        now = time.time()
        # A new file per run, named as TensorBoard's readers expect.
        path = os.path.join(
            directory, f"events.out.tfevents.{now:.6f}.{socket.gethostname()}.{os.getpid()}"
        )
        self._file = open(path, "xb")  # noqa: SIM115 - closed by close()
        self._add(event_pb2.Event(wall_time=now, file_version=_FILE_VERSION))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Adds `scalars` (name -> value) at `step` and flushes, so a killed run keeps them."""
        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=name, simple_value=float(value))
                for name, value in scalars.items()
            ]
        )
        self._add(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._file.close()

    def _add(self, event: event_pb2.Event) -> None:
        self._file.write(frame_record(event.SerializeToString()))
        self._file.flush()
