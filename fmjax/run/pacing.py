"""When the host steps in between compiled calls: the cadence of events, the steps per call, profiling."""

import dataclasses
import time
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils


@dataclasses.dataclass(frozen=True)
class Due:
    """What is due after a step: the end of an epoch (evaluation, its log line and, as
    CheckpointClock allows, a save) or a save of checkpoint_every_steps.

    Attributes:
      epoch_end: the step ends an epoch.
      every_steps: a save is due by checkpoint_every_steps.
    """

    epoch_end: bool
    every_steps: bool


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The one rule for what is due at which step (CheckpointClock adds the time an epoch's save waits for).

    Attributes:
      steps_per_epoch: steps in an epoch; each epoch's end evaluates, logs and may save.
      checkpoint_every_steps: saves in between as well, every this many steps; 0: none.
    """

    steps_per_epoch: int
    checkpoint_every_steps: int = 0

    def due(self, step: int) -> Due:
        """What is due once `step` updates are applied."""
        epoch_end = step > 0 and step % self.steps_per_epoch == 0
        every = self.checkpoint_every_steps
        return Due(epoch_end=epoch_end, every_steps=every > 0 and step % every == 0)

    def steps_to_next_event(self, step: int) -> int:
        """Steps from `step` until something is due (at least 1)."""
        until_epoch_end = self.steps_per_epoch - step % self.steps_per_epoch
        every = self.checkpoint_every_steps
        return min(until_epoch_end, every - step % every) if every > 0 else until_epoch_end


class CheckpointClock:
    """Whether an epoch's end saves: only once `min_seconds` have passed since the last save or the start.

    An epoch of the seed's job takes 0.6 s and its checkpoint 0.1 s of CPU on
    2 cores; an epoch of the seed at 224x224 writes 18.6 GB. Every process
    takes process 0's answer, so all save together.
    """

    def __init__(self, min_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._min_seconds = min_seconds
        self._clock = clock
        self._last = clock()

    def epoch_end_saves(self) -> bool:
        saves = self._clock() - self._last >= self._min_seconds
        if jax.process_count() > 1:
            saves = bool(multihost_utils.broadcast_one_to_all(np.bool_(saves)))
        return saves

    def saved(self) -> None:
        self._last = self._clock()


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
