"""A run's health, checked on the host before every save: finite steps, a loss that has not exploded.

A NaN or Inf in a step's loss, gradients or updated state sets the step's
"finite" flag to False (fmjax.core.steps), and the run stops naming that step.

A run can also diverge without a NaN: its training loss grows by orders of magnitude.

Adam's update is bounded by its rate, so at a rate like 1e6 the params stay
finite while the loss reaches 1e21 and the accuracy that of a guess; the
NaN/Inf guard never fires and the run trains on to its end. fmjax stops such
a run (exit status 3, as for a NaN) once a step's loss exceeds
config.halt_on_loss_growth times the run's first loss, or 1 if that is
smaller: far above any loss a learning run returns to (an untrained
classifier's cross-entropy is ln(classes), about 2.3 for 10), so a healthy
run's spikes never trip it. 0 turns it off.
"""

import math
from typing import Any, Optional, Sequence


class NonFiniteError(Exception):
    """A step's loss, gradients or updated state held a NaN or an Inf; nothing of it was saved."""

    def __init__(self, step: int, newest_checkpoint: Optional[int], directory: str):
        saved = (
            f"the newest checkpoint, step {newest_checkpoint} in {directory}, is finite"
            if newest_checkpoint is not None
            else "no checkpoint was saved"
        )
        super().__init__(
            f"the loss, gradients or updated params became NaN or Inf at step {step}; "
            f"{saved}; lower config.learning_rate (or set config.halt_on_nonfinite=False)"
        )
        self.step = step


def first_nonfinite_step(step_metrics: list[dict], first_step: int) -> Optional[int]:
    """The number of the first step whose "finite" flag is False, or None.

    Args:
      step_metrics: host copies of the metrics of steps first_step,
        first_step + 1, ...
      first_step: the step number (updates applied) after step_metrics[0].
    """
    for offset, metrics in enumerate(step_metrics):
        if not metrics.get("finite", True):  # absent: the run does not check
            return first_step + offset
    return None


class LossGrowthError(Exception):
    """The training loss grew past config.halt_on_loss_growth times the first; nothing of it was saved."""

    def __init__(self, step: int, loss: float, first_loss: float, factor: float, newest_checkpoint: Optional[int], directory: str):
        saved = (
            f"the newest checkpoint, step {newest_checkpoint} in {directory}, is from before"
            if newest_checkpoint is not None
            else "no checkpoint was saved"
        )
        super().__init__(
            f"the training loss grew to {loss:.3g} at step {step}, over {factor:g} times the first "
            f"step's {first_loss:.3g}: the run diverged; {saved}; lower config.learning_rate "
            "(or set config.halt_on_loss_growth=0)"
        )
        self.step = step


def loss_limit(first_loss: float, factor: float) -> float:
    """The loss above which a run counts as diverged; inf when the check is off (factor 0)."""
    if not factor:
        return math.inf
    return factor * max(first_loss, 1.0)


def first_grown_step(losses: list[float], first_step: int, limit: float) -> Optional[tuple[int, float]]:
    """(step, loss) of the first loss above `limit`, or None; losses[0] is step `first_step`'s.

    A NaN is left to the NaN/Inf guard (config.halt_on_nonfinite).
    """
    for offset, loss in enumerate(losses):
        if loss > limit:  # False for NaN
            return first_step + offset, loss
    return None


class HealthCheck:
    """Checks each call's steps before anything of them is saved; remembers the run's first loss.

    A population's members are checked each on its own: the first to go bad
    stops the run, and the error names it.

    Args:
      halt_on_nonfinite: stop at a step whose "finite" flag is False.
      growth_factor: config.halt_on_loss_growth (0: off).
      first_loss: the run's first training loss (per member for a population),
        when a checkpoint recorded it.
      members: a population's (seed, learning rate) per member; None for an ordinary run.
    """

    def __init__(
        self,
        halt_on_nonfinite: bool,
        growth_factor: float,
        first_loss: Any,
        members: Optional[Sequence[tuple[int, float]]] = None,
    ):
        self._halt_on_nonfinite = halt_on_nonfinite
        self._growth_factor = growth_factor
        self._members = members
        self.first_loss = first_loss

    def check(
        self, step_metrics: list[dict], first_step: int, newest_checkpoint: Optional[int], directory: str
    ) -> None:
        """Raises NonFiniteError or LossGrowthError for the first bad step of steps first_step, first_step + 1, ...

        Args:
          step_metrics: host copies of the steps' metrics.
          first_step: the step number (updates applied) after step_metrics[0].
          newest_checkpoint, directory: named in the error, for the user to go back to.
        """
        if not step_metrics:
            return
        if self._members is None:
            self.first_loss = self._check_one(step_metrics, first_step, newest_checkpoint, directory, self.first_loss)
            return
        first = list(self.first_loss) if self.first_loss is not None else [None] * len(self._members)
        for index, (seed, rate) in enumerate(self._members):
            member_metrics = [{key: value[index] for key, value in metrics.items()} for metrics in step_metrics]
            try:
                first[index] = self._check_one(member_metrics, first_step, newest_checkpoint, directory, first[index])
            except (NonFiniteError, LossGrowthError) as error:
                error.args = (f"member {index} (seed {seed}, learning rate {rate:g}): {error.args[0]}",)
                raise
        self.first_loss = first

    def _check_one(self, step_metrics, first_step, newest_checkpoint, directory, first_loss):
        bad_step = first_nonfinite_step(step_metrics, first_step)
        if self._halt_on_nonfinite and bad_step is not None:
            raise NonFiniteError(bad_step, newest_checkpoint, directory)
        losses = [float(metrics["loss"]) for metrics in step_metrics]
        if first_loss is None:
            first_loss = losses[0]
        grown = first_grown_step(losses, first_step, loss_limit(first_loss, self._growth_factor))
        if grown is not None:
            raise LossGrowthError(*grown, first_loss, self._growth_factor, newest_checkpoint, directory)
        return first_loss
