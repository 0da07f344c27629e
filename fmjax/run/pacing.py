"""When the host steps in between compiled calls: the cadence of events, the steps per call, profiling."""

import dataclasses
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils


@dataclasses.dataclass(frozen=True)
class Due:
    """What is due after a step: a checkpoint, the end of an epoch (evaluation and its log line)."""

    checkpoint: bool
    epoch_end: bool


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The one rule for what is due at which step.

    Attributes:
      steps_per_epoch: steps in an epoch; each epoch's end evaluates, logs and saves.
      checkpoint_every_steps: saves in between as well, every this many steps; 0: none.
    """

    steps_per_epoch: int
    checkpoint_every_steps: int = 0

    def due(self, step: int) -> Due:
        """What is due once `step` updates are applied."""
        epoch_end = step > 0 and step % self.steps_per_epoch == 0
        every = self.checkpoint_every_steps
        return Due(checkpoint=epoch_end or (every > 0 and step % every == 0), epoch_end=epoch_end)

    def steps_to_next_event(self, step: int) -> int:
        """Steps from `step` until something is due (at least 1)."""
        until_epoch_end = self.steps_per_epoch - step % self.steps_per_epoch
        every = self.checkpoint_every_steps
        return min(until_epoch_end, every - step % every) if every > 0 else until_epoch_end


class StepsPerCall:
    """How many steps the next compiled call runs: about `seconds` of work, the same on every process.

    The host checks for SIGTERM, due checkpoints and the epoch's end between
    calls, so the count bounds how long a stop waits. It grows from one step
    (the compilation) as the measured step time allows.
    """

    def __init__(self, seconds: float):
        self._seconds = seconds
        self._count = 1

    def next(self, remaining: int) -> int:
        return max(1, min(self._count, remaining))

    def measured(self, steps: int, seconds: float) -> None:
        per_step = seconds / max(steps, 1)
        count = int(self._seconds / per_step) if per_step > 0 else self._count * 2
        count = max(1, min(count, 2 * max(self._count, steps)))
        if jax.process_count() > 1:
            count = int(multihost_utils.broadcast_one_to_all(np.int32(count)))
        self._count = count


class StepProfile:
    """Traces `num_steps` steps after the first compilation with jax.profiler, into TensorBoard's folder.

    The trace shows where a step's time goes on the user's own hardware:
    `tensorboard --logdir WORKDIR`, Profile tab (with the tensorboard-plugin-profile package).
    """

    def __init__(self, num_steps: int, directory: str, report: Callable[[str], None]):
        self._left = num_steps
        self._directory = directory
        self._report = report
        self._tracing = False

    def before_call(self, count: int) -> int:
        """The step count the next call may run: no more than the steps still to trace."""
        if self._left <= 0:
            return count
        if not self._tracing:
            jax.profiler.start_trace(self._directory)
            self._tracing = True
        return min(count, self._left)

    def after_call(self, count: int) -> None:
        if not self._tracing:
            return
        self._left -= count
        if self._left <= 0:
            self.stop()
            self._report(f"profile of the traced steps written to {self._directory}")

    def stop(self) -> None:
        if self._tracing:
            self._tracing = False
            jax.profiler.stop_trace()
