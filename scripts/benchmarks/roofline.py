"""The fastest fmjax's train step could run on this machine, from XLA's counts, and how close it comes."""

import functools
from typing import Any, Sequence

import jax

from benchmarks.step import random_batch, seed_state
from fmjax import train_step
from fmjax.core import losses
from fmjax.tools.dry_run import xla_cost


def roofline(
    flops: float, bytes_accessed: float, peak_gflops: float, bandwidth_gbs: float, measured_s: float
) -> dict[str, Any]:
    """The fastest a computation could run on this machine, and how close it comes.

    Args:
      flops, bytes_accessed: the computation's work, from XLA's cost analysis.
      peak_gflops: the machine's matmul rate.
      bandwidth_gbs: the machine's memory bandwidth.
      measured_s: the computation's measured median time.

    Returns:
      {"compute_s", "memory_s", "bound_s", "bound_by", "fraction_of_bound"}:
      bound_s is the larger of compute_s and memory_s, and fraction_of_bound
      is bound_s / measured_s (1.0 would be the roofline itself).
    """
    compute_s = flops / (peak_gflops * 1e9)
    memory_s = bytes_accessed / (bandwidth_gbs * 1e9)
    bound_s = max(compute_s, memory_s)
    return {
        "compute_s": compute_s,
        "memory_s": memory_s,
        "bound_s": bound_s,
        "bound_by": "compute" if compute_s >= memory_s else "memory",
        "fraction_of_bound": bound_s / measured_s,
    }


def fmjax_step_cost(image_size: int, batch_size: int, hidden: int, num_classes: int) -> dict[str, float]:
    """XLA's counts for fmjax's train step on one device, as the jit form compiles it.

    Returns:
      {"flops", "bytes_accessed", "temp_bytes"}: the first two as
      fmjax.tools.dry_run.xla_cost gives them; temp_bytes is the scratch memory XLA
      allocates for every call (0 if the backend does not say).
    """
    state = seed_state(image_size, hidden, num_classes)
    batch = random_batch(batch_size, image_size, num_classes)
    step = jax.jit(functools.partial(train_step, loss_fn=losses.cross_entropy), donate_argnums=0)
    compiled = step.lower(state, batch).compile()
    memory = compiled.memory_analysis()
    return {**xla_cost(compiled), "temp_bytes": float(getattr(memory, "temp_size_in_bytes", 0) or 0)}


def step_rooflines(
    cost: dict[str, float], results: Sequence[dict[str, Any]], peak_gflops: float, bandwidth_gbs: float
) -> list[dict[str, Any]]:
    """The roofline of each fmjax step in `results` (one input size), per step of a call.

    Args:
      cost: fmjax_step_cost at the results' size.
      results: step results, as benchmarks.step.step_results makes; PyTorch's are skipped.
      peak_gflops, bandwidth_gbs: the machine's rates (benchmarks.machine).

    Returns:
      One {"image_size", "variant", **cost, **roofline} per fmjax result.
    """
    return [
        {
            "image_size": result["image_size"],
            "variant": result["variant"],
            **cost,
            **roofline(
                cost["flops"],
                cost["bytes_accessed"],
                peak_gflops,
                bandwidth_gbs,
                result["timing"]["median_s"] / result["steps_per_call"],
            ),
        }
        for result in results
        if result["framework"] == "fmjax"
    ]
