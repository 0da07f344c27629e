"""Preemption: a SIGTERM makes training save at the next step boundary and stop.

With one process, a SIGTERM handler sets a flag that the loop reads after
each step. With several (jax.distributed), one process's notice must become
the same step on all of them, or they would save different steps: JAX's
preemption service (on by default in jax.distributed.initialize) catches
SIGTERM itself, agrees on the step after the furthest one any process has
reached, and `multihost_utils.reached_preemption_sync_point(step)`, called at
every step by every process, turns True at that step on all of them.
"""

import contextlib
import signal
import threading
from typing import Callable, Iterator

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; the same command resumes it.

    Attributes:
      step: the step saved.
      directory: where the checkpoints are.
    """

    def __init__(self, step: int, directory: str):
        super().__init__(
            f"stopped by SIGTERM after saving step {step} in {directory}; "
            "run the same command to resume"
        )
        self.step = step
        self.directory = directory


@contextlib.contextmanager
def watch_for_sigterm() -> Iterator[Callable[[int], bool]]:
    """Yields `should_stop(step)`, True once a SIGTERM asks the run to save at `step` and stop.

    Call `should_stop` after every train step with the state's step, on every
    process, so that several processes stop at the same step.
    """
    if jax.process_count() > 1:
        yield _reached_sync_point
        return
    if threading.current_thread() is not threading.main_thread():
        # Python lets only the main thread set signal handlers; a run started
        # from another thread keeps SIGTERM's default (ending the process).
        yield lambda step: False
        return
    received = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.set())
    try:
        yield lambda step: received.is_set()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _reached_sync_point(step: int) -> bool:
    try:
        return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:
        # The preemption service is off (jax_enable_preemption_service): no
        # notice can arrive, and SIGTERM keeps its default.
        return False
