"""What a run shows and records as it goes: its lines, progress bars and per-epoch records."""

import sys
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np
import tqdm

from fmjax.core.population import Member
from fmjax.run import rundir
from fmjax.run.record import TrainSums
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


def epoch_record(
    epoch: int,
    step: int,
    train_sums: TrainSums,
    test: Any,
    images_per_second: float,
    members: Optional[Sequence[Member]] = None,
) -> dict[str, Any]:
    """An epoch's metrics.jsonl record.

    For a population (`members`, and `test` a list of test_metrics per member)
    the record holds each member's losses and accuracies under "members", the
    mean and standard deviation of test accuracy over the seeds of each rate
    under "by_learning_rate", "best_member" (the index of the best test
    accuracy), and at the top level the means over the members; images per
    second count every member's images.
    """
    train_loss, train_accuracy = train_sums.means()
    if members is None:
        return {
            "epoch": epoch,
            "step": step,
            "train_loss": float(train_loss),
            "train_accuracy": float(train_accuracy),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "images_per_second": images_per_second,
        }
    rows = [
        {
            "seed": member.seed,
            "learning_rate": member.learning_rate,
            "train_loss": float(train_loss[index]),
            "train_accuracy": float(train_accuracy[index]),
            "test_loss": test[index]["loss"],
            "test_accuracy": test[index]["accuracy"],
        }
        for index, member in enumerate(members)
    ]
    by_rate = []
    for rate in dict.fromkeys(member.learning_rate for member in members):
        accuracies = np.asarray([row["test_accuracy"] for row in rows if row["learning_rate"] == rate])
        by_rate.append(
            {
                "learning_rate": rate,
                "seeds": len(accuracies),
                "test_accuracy_mean": float(accuracies.mean()),
                # Over seeds, as error bars: the sample standard deviation.
                "test_accuracy_std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
            }
        )
    return {
        "epoch": epoch,
        "step": step,
        **{key: float(np.mean([row[key] for row in rows])) for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")},
        "images_per_second": images_per_second,
        "members": rows,
        "by_learning_rate": by_rate,
        "best_member": int(np.argmax([row["test_accuracy"] for row in rows])),
    }


def member_tag(row: dict[str, Any]) -> str:
    """A population member's name in TensorBoard: its seed and rate."""
    return f"seed_{row['seed']}_lr_{row['learning_rate']:g}"


class EpochRecords:
    """Each finished epoch's record: a line on the console, one in metrics.jsonl, TensorBoard scalars."""

    def __init__(self, workdir: str, num_epochs: int, first_step: int = 1):
        self._workdir = workdir
        self._num_epochs = num_epochs
        self._summaries = EpochSummaries(workdir, first_step) if is_logging_process() else None

    def write(self, record: dict[str, Any], learning_rate: Any) -> None:
        """Writes an epoch's record; `learning_rate` is the last step's rate, one per member for a population."""
        head = f"epoch {record['epoch']}/{self._num_epochs}  step {record['step']}  "
        if "members" not in record:
            log(
                f"{head}train loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.2%}  "
                f"test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.2%}  "
                f"{record['images_per_second']:.0f} images/s"
            )
        else:
            best = record["best_member"]
            log(
                f"{head}{len(record['members'])} members: mean train loss {record['train_loss']:.4f}  "
                f"mean test acc {record['test_accuracy']:.2%}  best {record['members'][best]['test_accuracy']:.2%} "
                f"(member {best}, {member_tag(record['members'][best])})  "
                f"{record['images_per_second']:.0f} member-images/s"
            )
            for rate in record["by_learning_rate"]:
                log(
                    f"  learning rate {rate['learning_rate']:g}: test acc {rate['test_accuracy_mean']:.2%} "
                    f"± {rate['test_accuracy_std']:.2%} over {rate['seeds']} seed(s)"
                )
        if self._summaries is None:
            return
        rundir.append_metrics(self._workdir, record)
        scalars = {
            "train/loss": record["train_loss"],
            "train/accuracy": record["train_accuracy"],
            "test/loss": record["test_loss"],
            "test/accuracy": record["test_accuracy"],
            "images_per_second": record["images_per_second"],
        }
        if "members" not in record:
            scalars["learning_rate"] = float(learning_rate)
        for index, row in enumerate(record.get("members", [])):
            scalars[f"learning_rate/{member_tag(row)}"] = float(learning_rate[index])
            for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
                split, metric = key.split("_")
                scalars[f"{split}/{metric}/{member_tag(row)}"] = row[key]
        self._summaries.write(record["step"], scalars)

    def close(self) -> None:
        if self._summaries is not None:
            self._summaries.close()
