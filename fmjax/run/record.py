"""What a checkpoint records besides the arrays, and the epoch's running train sums it carries."""

import dataclasses
from typing import Any, Optional, Union

import numpy as np

from fmjax.run import identity as run_identity


@dataclasses.dataclass(frozen=True)
class TrainSums:
    """Sums of the per-step train metrics over the current epoch's steps so far.

    Checkpoints keep them, so an epoch's train loss and accuracy come out the
    same whether or not the run stopped inside it.
    """

    loss: Union[float, list[float]] = 0.0
    accuracy: Union[float, list[float]] = 0.0
    steps: int = 0

    def plus(self, step_metrics: list[dict]) -> "TrainSums":
        """These sums with host copies of consecutive steps' metrics added.

        One step at a time, in float64, so the same steps give the same sums
        however they were split between calls. A population's metrics hold
        one value per member, and so do its sums.
        """
        loss, accuracy = np.asarray(self.loss, np.float64), np.asarray(self.accuracy, np.float64)
        for metrics in step_metrics:
            loss = loss + np.asarray(metrics["loss"], np.float64)
            accuracy = accuracy + np.asarray(metrics["accuracy"], np.float64)
        return TrainSums(loss.tolist(), accuracy.tolist(), self.steps + len(step_metrics))

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """(train loss, train accuracy) over the steps summed, per member for a population; NaN for none."""
        if not self.steps:
            nan = np.full(np.shape(self.loss), np.nan)
            return nan, nan
        return np.asarray(self.loss) / self.steps, np.asarray(self.accuracy) / self.steps


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint's record beside the state (its JSON metadata), as train.py writes and reads it.

    Attributes:
      epoch: epochs whose metrics line is written.
      next_batch: the batch of epoch `epoch` that comes next; steps_per_epoch
        when that epoch is trained and its line not yet written.
      train_sums: the sums of epoch `epoch`'s steps so far.
      class_names: the classes the model's outputs mean, in order.
      image_size: the side, in pixels, of the images it trained on.
      first_loss: the run's first training loss (see fmjax.run.divergence),
        per member for a population.
      identity: the config and data that define the run (fmjax.run.identity).
      best_member: a population's member of the best test accuracy at the
        last epoch logged, an index into the state's member axis; None for an
        ordinary run or before the first epoch's end.
      members: a population's [seed, learning rate] per member, in the order
        of the state's member axis; None for an ordinary run.
    """

    epoch: int
    next_batch: int
    train_sums: TrainSums
    class_names: list[str]
    image_size: int
    first_loss: Optional[Union[float, list[float]]]
    identity: dict[str, Any]
    best_member: Optional[int] = None
    members: Optional[list[list[float]]] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "train_sums": dataclasses.asdict(self.train_sums),
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "first_loss": self.first_loss,
            run_identity.RECORD_KEY: self.identity,
            "best_member": self.best_member,
            "members": self.members,
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> "CheckpointRecord":
        return cls(
            epoch=int(meta["epoch"]),
            next_batch=int(meta["next_batch"]),
            train_sums=TrainSums(**meta["train_sums"]),
            class_names=list(meta.get("class_names") or []),
            image_size=meta.get("image_size"),
            first_loss=meta.get("first_loss"),
            identity=dict(meta.get(run_identity.RECORD_KEY, {})),
            best_member=meta.get("best_member"),
            members=meta.get("members"),
        )
