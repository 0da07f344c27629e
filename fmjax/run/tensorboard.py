"""TensorBoard event files of a run: one point per epoch for each metric.

Written with the tensorboard package's record framing and protocol buffers
into a file fmjax opens itself: the package's own file writer goes through
TensorFlow's file system layer, and importing TensorFlow costs seconds.
"""

import os
import socket
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from fmjax.run import rundir

# The first record of every event file, which readers check.
_FILE_VERSION = "brain.Event:2"


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
        self._records = RecordWriter(open(path, "xb"))  # noqa: SIM115 - closed by close()
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
        self._records.close()

    def _add(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()
