"""Wall-clock timing of repeated calls: warm-up first, then the median and its spread."""

import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls.

    Attributes:
      median_s: the median call, the number every rate is computed from.
      min_s, max_s: the fastest and slowest call, the spread around it.
      repeats: how many calls were timed.
    """

    median_s: float
    min_s: float
    max_s: float
    repeats: int

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _timing(seconds: Sequence[float]) -> Timing:
    return Timing(statistics.median(seconds), min(seconds), max(seconds), len(seconds))


def time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> Timing:
    """Times `call`, which must return only once its work is done.

    Args:
      call: a function of no arguments; its result is ignored.
      warmup: untimed calls first (compilation, caches, thread pools).
      repeats: timed calls, at least 1.

    Returns:
      The Timing of the timed calls.
    """
    return time_interleaved({"call": call}, warmup, repeats)["call"]


def time_interleaved(
    calls: dict[str, Callable[[], Any]], warmup: int, repeats: int
) -> dict[str, Timing]:
    """Times several calls in turn, one of each per round, `repeats` rounds.

    Taking turns spreads any slow spell of the machine (another process
    waking up) over every contender instead of on whichever ran then.

    Args:
      calls: name -> a function of no arguments that returns once its work is done.
      warmup: untimed calls of each first.
      repeats: rounds, at least 1.

    Returns:
      name -> the Timing of its calls.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return {name: _timing(times) for name, times in seconds.items()}
