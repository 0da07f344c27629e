"""A run that diverges without a NaN: its training loss grows by orders of magnitude.

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
from typing import Optional


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
