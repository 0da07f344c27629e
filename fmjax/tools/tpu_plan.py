"""Plans a run on a Cloud TPU slice from any machine: `train.py --dry_run --tpu v5litepod-4`.

libtpu compiles for a TPU topology without the chips attached, so fmjax's own
train and eval steps (fmjax.parallel's jit form, with the config's FSDP
setting, dtype and micro-batches) are compiled here for the slice's chips,
and XLA's memory and cost analyses say, per chip, what the run needs.

A slice of several hosts is compiled as its multi-process run runs: one
program over every chip of the slice, for the global batch, each host
feeding its share; the program does not depend on which process compiles it.
"""

import dataclasses
import os
from typing import Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from fmjax.errors import UserError
from fmjax.tools.tpu_slices import (
    Slice,
    parse_accelerator_type,
    quiet_stderr,
    sizes_of,
    topology_devices,
)


@dataclasses.dataclass(frozen=True)
class StepCost:
    """One compiled step on one chip, as XLA's memory and cost analyses give it (bytes, FLOPs)."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    flops: float
    bytes_accessed: float

    @property
    def peak_bytes(self) -> int:
        """Arguments, outputs and temporaries alive together; a donated argument's output counted once."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def step_cost(compiled) -> StepCost:
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return StepCost(
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
    )


@dataclasses.dataclass(frozen=True)
class TpuPlan:
    """A config compiled for a slice: each step's cost, or XLA's reason it does not fit."""

    slice: Slice
    shard_params: bool
    batch_size: int
    train: Optional[StepCost]
    eval: Optional[StepCost]
    out_of_memory: str = ""

    @property
    def fits(self) -> bool:
        steps = (self.train, self.eval)
        return not self.out_of_memory and all(s.peak_bytes <= self.slice.chip.hbm_bytes for s in steps)


def plan_on_slice(config: ml_collections.ConfigDict, slice_: Slice, shard_params: bool) -> TpuPlan:
    """Compiles `config`'s train and eval steps for `slice_`; XLA's out-of-memory refusal is a plan that does not fit."""
    # Keyed by the config's text: a suggestion planned again in one process is not compiled twice.
    keyed = config.copy_and_resolve_references()
    keyed.shard_params = shard_params
    key = (keyed.to_json_best_effort(sort_keys=True), slice_)
    if key not in _PLANS:
        _PLANS[key] = _compile_plan(config, slice_, shard_params)
    return _PLANS[key]


_PLANS: dict = {}


def _compile_plan(config: ml_collections.ConfigDict, slice_: Slice, shard_params: bool) -> TpuPlan:
    from fmjax.core.build import build
    from fmjax.data import prepare_fn
    from fmjax.parallel.data_parallel import parallel_from_config
    from fmjax.parallel.interface import DATA_AXIS, global_mesh
    from fmjax.parallel.mesh import abstract_state

    config = config.copy_and_resolve_references()
    config.shard_params = shard_params
    # What "auto" picks on a TPU; traced on this host, "auto" would pick the CPU's.
    if config.model.conv == "auto":
        config.model.conv = "native"
    if config.model.dense == "auto":
        config.model.dense = "plain"
    if config.optimizer.get("update_placement", "auto") == "auto":
        config.optimizer.update_placement = "inline"
    devices = topology_devices(slice_)
    # Digits come as float pixels, image files as uint8.
    pixels = np.float32 if config.data.source == "digits" else np.uint8
    parallel = parallel_from_config(config, prepare_fn(config), devices=devices)
    # The schedule's length costs nothing, so one step an epoch stands in for the data's.
    parts = build(config, config.num_classes, (config.image_size, config.image_size, 3))
    state = abstract_state(parts.init_state, parallel.state_sharding)
    mesh = global_mesh(devices)
    split = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    one = NamedSharding(mesh, PartitionSpec())
    n = config.batch_size
    batch = {
        "image": jax.ShapeDtypeStruct((n, *parts.image_shape), pixels, sharding=split),
        "label": jax.ShapeDtypeStruct((n,), np.int32, sharding=split),
        "index": jax.ShapeDtypeStruct((n,), np.int32, sharding=split),
    }
    epoch = jax.ShapeDtypeStruct((), np.int32, sharding=one)
    eval_batch = {**batch, "mask": jax.ShapeDtypeStruct((n,), np.float32, sharding=split)}
    # The trainer donates the state to each step; this jit does too.
    train = jax.jit(lambda s, b, e: parallel.train_step(s, b, e), donate_argnums=0)
    try:
        with quiet_stderr():
            train_cost = step_cost(train.lower(state, batch, epoch).compile())
            eval_cost = step_cost(parallel.eval_step.lower(state, eval_batch).compile())
    except Exception as e:  # noqa: BLE001 - XLA's errors have no common public type
        message = " ".join(str(e).split())
        if "out of memory" not in message.lower() and "resource_exhausted" not in message.lower():
            raise UserError(f"XLA could not compile the step for {slice_.accelerator_type}: {message[:400]}") from e
        return TpuPlan(slice_, shard_params, n, None, None, out_of_memory=message[:300])
    return TpuPlan(slice_, shard_params, n, train_cost, eval_cost)


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:,.2f} GB"


def format_step(name: str, cost: StepCost, slice_: Slice, batch_size: int) -> list[str]:
    """A step's lines: XLA's bytes per chip against the chip's HBM, its FLOPs and a roofline time."""
    chip = slice_.chip
    seconds = max(cost.flops / chip.peak_flops, cost.bytes_accessed / chip.hbm_bandwidth)
    speed = f": {batch_size / seconds:,.0f} images/s" if seconds > 0 else ""
    return [
        f"{name} step, per chip: arguments {cost.argument_bytes:,} B, temporaries {cost.temp_bytes:,} B, "
        f"outputs {cost.output_bytes:,} B, aliased {cost.alias_bytes:,} B, peak {cost.peak_bytes:,} B "
        f"= {_gb(cost.peak_bytes)} of {_gb(chip.hbm_bytes)} HBM",
        f"{name} step, per chip: {cost.flops:.3e} FLOPs, {cost.bytes_accessed:.3e} bytes of HBM traffic; "
        f"roofline {seconds * 1e3:,.2f} ms (compute {cost.flops / chip.peak_flops * 1e3:,.2f} ms, "
        f"HBM {cost.bytes_accessed / chip.hbm_bandwidth * 1e3:,.2f} ms){speed}",
    ]


def format_tpu_plan(plan: TpuPlan, config: ml_collections.ConfigDict) -> str:
    """The plan as `train.py --dry_run --tpu` prints it, ending with "fits: yes" or "fits: no"."""
    slice_ = plan.slice
    hosts = f"{slice_.hosts} hosts, each feeding {plan.batch_size // slice_.hosts}" if slice_.hosts > 1 else "1 host"
    lines = [
        f"{slice_.accelerator_type}: {slice_.chips} x {slice_.chip.name} (topology {slice_.topology}), {hosts}; "
        f"batch {plan.batch_size}, {plan.batch_size // slice_.chips} per chip",
        f"compiled: parallel=jit, shard_params={plan.shard_params}, model.dtype={config.model.dtype}, "
        f"grad_accum_steps={config.grad_accum_steps}",
    ]
    if plan.out_of_memory:
        lines.append(f"XLA refused it: {plan.out_of_memory}")
    else:
        lines += format_step("train", plan.train, slice_, plan.batch_size)
        lines += format_step("eval", plan.eval, slice_, plan.batch_size)
    lines.append(f"fits: {'yes' if plan.fits else 'no'}")
    return "\n".join(lines)


def _candidates(slice_: Slice, shard_params: bool) -> list[tuple[Slice, bool]]:
    """Other settings to try, smallest slice first: FSDP on this slice, then bigger slices of its generation."""
    settings = []
    for size in (s for s in sizes_of(slice_.generation) if s >= slice_.size):
        bigger = Slice(f"{slice_.generation}-{size}", slice_.generation, size)
        settings += [(bigger, fsdp) for fsdp in dict.fromkeys((shard_params, True))]
    return [setting for setting in settings if setting != (slice_, shard_params)]


def command_for(argv: Sequence[str], slice_: Slice, shard_params: bool) -> str:
    """argv with --tpu, --config.parallel and --config.shard_params set to the given slice and setting."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--tpu":
            skip = True
        elif not arg.startswith(("--tpu=", "--config.parallel", "--config.shard_params=")) and arg not in (
            "--config.shard_params",
            "--noconfig.shard_params",
        ):
            kept.append(arg)
    program = os.path.basename(argv[0])
    program = f"python {program}" if program.endswith(".py") else program
    settings = f"--tpu {slice_.accelerator_type} --config.parallel=jit --config.shard_params={shard_params}"
    return " ".join([program, *kept, settings])


def tpu_dry_run(
    config: ml_collections.ConfigDict,
    accelerator_type: str,
    argv: Sequence[str],
    max_candidates: int,
    report: Callable[[str], None],
) -> None:
    """Reports `config` compiled for the slice; when it does not fit, the smallest candidate that does.

    Raises:
      UserError: an unknown slice, no libtpu, pmap, a batch the slice cannot
        split, a compile error, or no candidate that fits.
    """
    slice_ = parse_accelerator_type(accelerator_type)
    if config.parallel != "jit":
        raise UserError(
            f"--tpu compiles the jit form only (fmjax's pmap step is built for the devices attached); "
            f"config.parallel is {config.parallel!r}: add --config.parallel=jit"
        )
    jax.config.update("jax_platforms", "cpu")  # compile only; a TPU VM's own chips stay free
    # JAX's persistent compilation cache stays off here (config.compilation_cache_dir
    # is not applied): it would write these compiles, but reading one back needs
    # a TPU client, so each entry would be a miss and a warning.
    plan = plan_on_slice(config, slice_, config.shard_params)
    report(format_tpu_plan(plan, config))
    if plan.fits:
        return
    tried = []
    for candidate, fsdp in _candidates(slice_, config.shard_params)[:max_candidates]:
        try:
            option = plan_on_slice(config, candidate, fsdp)
        except UserError:  # e.g. a batch that does not split over more chips
            continue
        tried.append(f"{candidate.accelerator_type} shard_params={fsdp}")
        if option.fits:
            peak = max(option.train.peak_bytes, option.eval.peak_bytes)
            report(
                f"smallest that fits: {candidate.accelerator_type}, shard_params={fsdp}, peak "
                f"{_gb(peak)} of {_gb(candidate.chip.hbm_bytes)} per chip; plan it with:\n"
                f"  {command_for(argv, candidate, fsdp)}"
            )
            return
    raise UserError(
        f"nothing tried fits ({'; '.join(tried) or 'no other slice compiled'}); lower config.batch_size "
        "or config.image_size, set config.model.dtype=bfloat16, or try more with --tpu_candidates"
    )
