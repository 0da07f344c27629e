"""What a run shows and records as it goes: its lines, progress bars and per-epoch records."""

import sys
import time
from typing import Any, Optional

import jax
import tqdm

from fmjax.run import rundir
from fmjax.run.tensorboard import EpochSummaries


def is_logging_process() -> bool:
    """Only process 0 prints and writes logs; every process joins checkpoints."""
    return jax.process_index() == 0


def log(message: str) -> None:
    """Prints one line from process 0, without breaking a progress bar."""
    if is_logging_process():
        tqdm.tqdm.write(message)


def images_per_second(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


class Progress:
    """The running epoch's progress: a bar on a terminal; elsewhere (a file, CI) a line every `line_seconds`.

    In a log file, a bar's carriage returns are noise.
    """

    def __init__(self, steps_per_epoch: int, num_epochs: int, line_seconds: float):
        self._steps_per_epoch = steps_per_epoch
        self._num_epochs = num_epochs
        self._line_seconds = line_seconds
        self._interactive = sys.stderr.isatty()
        self._bar: Optional[tqdm.tqdm] = None
        self._epoch = -1
        self._last_line = time.monotonic()

    def update(self, step: int, count: int, train_loss: float, rate: float) -> None:
        """Steps step - count .. step - 1 are done; `train_loss` is the epoch's so far."""
        epoch, batch = divmod(step - count, self._steps_per_epoch)
        if epoch != self._epoch:
            self.close()
            self._epoch = epoch
            self._bar = tqdm.tqdm(
                total=self._steps_per_epoch,
                initial=batch,
                desc=f"epoch {epoch + 1}/{self._num_epochs}",
                disable=not (is_logging_process() and self._interactive),
                leave=False,
            )
        self._bar.update(count)
        if not self._interactive and time.monotonic() - self._last_line >= self._line_seconds:
            self._last_line = time.monotonic()
            log(
                f"epoch {epoch + 1}/{self._num_epochs}  batch {batch + count}/{self._steps_per_epoch}  "
                f"train loss so far {train_loss:.4f}  {rate:.0f} images/s"
            )

    def close(self) -> None:
        """Takes the bar off the line (before any other line, or an error's, is printed)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._epoch = -1


class EpochRecords:
    """Each finished epoch's record: a line on the console, one in metrics.jsonl, TensorBoard scalars."""

    def __init__(self, workdir: str, num_epochs: int):
        self._workdir = workdir
        self._num_epochs = num_epochs
        self._summaries = EpochSummaries(workdir) if is_logging_process() else None

    def write(self, record: dict[str, Any], learning_rate: float) -> None:
        log(
            f"epoch {record['epoch']}/{self._num_epochs}  step {record['step']}  "
            f"train loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.2%}  "
            f"test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.2%}  "
            f"{record['images_per_second']:.0f} images/s"
        )
        if self._summaries is None:
            return
        rundir.append_metrics(self._workdir, record)
        self._summaries.write(
            record["step"],
            {
                "train/loss": record["train_loss"],
                "train/accuracy": record["train_accuracy"],
                "test/loss": record["test_loss"],
                "test/accuracy": record["test_accuracy"],
                "learning_rate": learning_rate,
                "images_per_second": record["images_per_second"],
            },
        )

    def close(self) -> None:
        if self._summaries is not None:
            self._summaries.close()
