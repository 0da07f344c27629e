"""A population's dry run: its train step compiled for one device, and how many members would fit.

The population's step is the one training runs (fmjax.parallel's per-device
step, every member vmapped, each augmenting from its own seed), compiled for
abstract inputs like the ordinary dry run's. How many members fit is an
estimate: XLA's memory for the step is taken as a part the members share (the
batch of pixels, XLA's own buffers) plus an equal part per member, both found
from two compiles of different member counts; XLA may lay out a bigger
population differently.
"""

import dataclasses
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from fmjax.core.build import build
from fmjax.core.losses import get_loss
from fmjax.core.population import population_members


@dataclasses.dataclass(frozen=True)
class PopulationPlan:
    """A population's train step on one device, and the members that fit it.

    Attributes:
      num_members, num_seeds, num_rates: the population's size, seeds x rates.
      step_memory_bytes: XLA's memory for the whole population's step, as
        the ordinary plan counts it (arguments + outputs + temporaries -
        aliased).
      flops_per_step: XLA's count for that step.
      batch_per_device: examples each member sees per step on one device.
      reference_members, reference_bytes: a population of another size
        compiled the same way (see reference_seeds), to take the growth per
        member from.
      usable_bytes: what the step may use of one device's memory (see
        fmjax.tools.dry_run.USABLE_MEMORY_FRACTION), or None where the device
        does not report its memory.
    """

    num_members: int
    num_seeds: int
    num_rates: int
    step_memory_bytes: int
    flops_per_step: float
    batch_per_device: int
    reference_members: int
    reference_bytes: int
    usable_bytes: Optional[int]

    @property
    def measured(self) -> tuple[int, int, int, int]:
        """(fewer members, their bytes, more members, their bytes) of the two compiles compared."""
        pairs = sorted([(self.num_members, self.step_memory_bytes), (self.reference_members, self.reference_bytes)])
        return (*pairs[0], *pairs[1])

    @property
    def bytes_per_member(self) -> int:
        """What one more member adds to the step's memory (an estimate: the compiles' difference per member)."""
        few, few_bytes, many, many_bytes = self.measured
        return -((few_bytes - many_bytes) // (many - few))  # rounded up, so the fit errs low

    @property
    def shared_bytes(self) -> int:
        """The step's memory that does not grow with the members (an estimate)."""
        few, few_bytes, _, _ = self.measured
        return few_bytes - few * self.bytes_per_member

    @property
    def fits(self) -> Optional[bool]:
        return None if self.usable_bytes is None else self.step_memory_bytes <= self.usable_bytes

    def members_that_fit(self) -> Optional[int]:
        """floor((usable - shared) / per member): None when the memory or a growth is unknown."""
        if self.usable_bytes is None or self.bytes_per_member <= 0:
            return None
        return max(0, (self.usable_bytes - self.shared_bytes) // self.bytes_per_member)


def reference_seeds(config: ml_collections.ConfigDict) -> list[int]:
    """The seeds of the population compiled beside `config`'s: its first member, or two when it has one."""
    seeds = member_seeds(config)
    return seeds[:1] if len(seeds) > 1 else [seeds[0], seeds[0] + 1]


def member_seeds(config: ml_collections.ConfigDict) -> list[int]:
    """Each member's seed, in the order of the state's member axis."""
    return [member.seed for member in population_members(config)]


def compiled_population_step(config: ml_collections.ConfigDict, seeds: list[int], batch_per_device: int) -> Any:
    """One device's train step of a population of `len(seeds)` members, compiled as `config.parallel` runs it.

    The state is `config`'s population state (build) with its member axis
    resized to the seeds; the members share one batch of pixels, as streamed
    training gives them, and each prepares and augments it from its own seed.
    With data on the device each member gathers its own batch: one batch of
    pixels more per member, not counted here.
    """
    from fmjax.data import prepare_fn
    from fmjax.parallel.interface import DATA_AXIS, per_device_steps

    parts = build(config, config.num_classes, (config.image_size, config.image_size, 3))
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((len(seeds), *x.shape[1:]), x.dtype), jax.eval_shape(parts.init_state)
    )
    pixels = np.float32 if config.data.source == "digits" else np.uint8  # as the sources give them
    batch = {
        "image": jax.ShapeDtypeStruct((batch_per_device, *parts.image_shape), pixels),
        "label": jax.ShapeDtypeStruct((batch_per_device,), np.int32),
        "index": jax.ShapeDtypeStruct((batch_per_device,), np.int32),
    }
    epoch = jax.ShapeDtypeStruct((), np.int32)
    pmap = config.parallel == "pmap"
    train_step = per_device_steps(
        get_loss(config.loss, config.label_smoothing),
        get_loss(config.loss),
        prepare_fn(config),
        {"check_finite": config.halt_on_nonfinite, "grad_accum_steps": config.grad_accum_steps},
        axis_name=DATA_AXIS if pmap else None,
        member_seeds=seeds,
    )[0]
    if not pmap:
        return jax.jit(train_step, donate_argnums=0).lower(state, batch, epoch).compile()
    # pmap's form on one device: a leading device axis of 1 on the state and batch.
    state, batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype), (state, batch))
    pmapped = jax.pmap(
        train_step, DATA_AXIS, in_axes=(0, 0, None), donate_argnums=0, devices=jax.devices()[:1]
    )
    return pmapped.lower(state, batch, epoch).compile()


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'s' * (number != 1)}"


def format_population(plan: PopulationPlan) -> list[str]:
    """The population's lines of `train.py --dry_run`, ending with its "fits:" line."""
    few, few_bytes, many, many_bytes = plan.measured
    lines = [
        f"population: {_count(plan.num_members, 'member')} ({_count(plan.num_seeds, 'seed')} x "
        f"{_count(plan.num_rates, 'learning rate')}) in one vmapped train step",
        f"population's train step on one device ({plan.batch_per_device} examples per member): "
        f"{plan.flops_per_step:,.0f} flops, {plan.step_memory_bytes:,} B = {plan.step_memory_bytes / 1e9:,.2f} GB "
        "of memory (XLA)",
        f"per member (estimate, from {_count(few, 'member')}: {few_bytes:,} B and {many}: {many_bytes:,} B): "
        f"{plan.bytes_per_member:,} B, beside {plan.shared_bytes:,} B shared",
    ]
    fit = plan.members_that_fit()
    if fit is None:
        lines.append("members that fit one device: unknown (no memory reported, or no growth per member measured)")
    else:
        lines.append(
            f"members that fit one device: about {fit:,} (estimate: ({plan.usable_bytes:,} B usable - "
            f"{plan.shared_bytes:,} B shared) / {plan.bytes_per_member:,} B per member, rounded down)"
        )
    if plan.fits is None:
        lines.append("fits: unknown (the devices do not report their memory)")
    elif plan.fits:
        lines.append("fits: yes")
    else:
        lines.append(
            f"fits: no ({plan.step_memory_bytes / 1e9:,.2f} GB needed per device); lower config.num_seeds or "
            "the rates in config.sweep.learning_rates, or config.batch_size"
        )
    return lines
