"""Plans a run before it starts: parameters, memory and flops, from shapes alone.

Nothing here allocates the model or reads data: the state comes from
`jax.eval_shape`, and the train step is lowered and compiled for abstract
inputs, so the seed's 1.55-billion-weight model can be planned on a laptop.
A population's plan is one member's, as its own run, and then the
population's step (fmjax.tools.population_plan).
"""

import dataclasses
import functools
import math
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from fmjax.core.batch_size import per_device_batch_size
from fmjax.core.build import build
from fmjax.core.losses import get_loss
from fmjax.core.population import is_population, member_config, population_members
from fmjax.core.steps import train_step
from fmjax.tools.population_plan import (
    PopulationPlan,
    compiled_population_step,
    format_population,
    member_seeds,
    reference_seeds,
)

# Room left on a device for XLA's own buffers and fragmentation.
USABLE_MEMORY_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a config's run needs, per device.

    Attributes:
      layers: (layer name, number of weights) in the model's order.
      total_params: the sum of `layers`.
      param_bytes, grad_bytes, optimizer_bytes: the state's parts, in bytes.
      activation_bytes: every layer's output for one device's batch, and
        the batch itself: what the backward pass keeps, roughly.
      flops_per_step: XLA's count for one device's train step.
      step_memory_bytes: the compiled step's arguments, outputs and temporaries
        on one device, less the buffers it reuses.
      batch_per_device: examples one device sees per step.
      num_devices: the devices JAX sees.
      device_kind: what they are (e.g. "cpu", "TPU v4").
      device_memory_bytes: one device's memory where JAX reports it, else the
        host's memory for CPU devices, else None.
      population: for a population, its step and the members that fit; the
        fields above are then one member's, as its own run.
    """

    layers: list[tuple[str, int]]
    total_params: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    flops_per_step: float
    step_memory_bytes: int
    batch_per_device: int
    num_devices: int
    device_kind: str
    device_memory_bytes: Optional[int]
    population: Optional[PopulationPlan] = None

    @property
    def state_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    @property
    def expected_bytes(self) -> int:
        """What a step cannot do without: the state, its gradients and the activations."""
        return self.state_bytes + self.activation_bytes

    @property
    def fits(self) -> Optional[bool]:
        if self.device_memory_bytes is None:
            return None
        return self.step_memory_bytes <= USABLE_MEMORY_FRACTION * self.device_memory_bytes

    def devices_needed_with_sharding(self) -> Optional[int]:
        """Devices over which sharded params, gradients and Adam moments fit beside the rest."""
        if self.device_memory_bytes is None:
            return None
        unsharded = max(self.step_memory_bytes - self.state_bytes, 0)
        room = USABLE_MEMORY_FRACTION * self.device_memory_bytes - unsharded
        if room <= 0:
            return None
        return max(1, math.ceil(self.state_bytes / room))


def _nbytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _layer_sizes(params: Any) -> list[tuple[str, int]]:
    return [
        (name, sum(int(np.prod(x.shape)) for x in jax.tree.leaves(layer)))
        for name, layer in params.items()
    ]


def _device_memory(device: jax.Device) -> Optional[int]:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def xla_cost(compiled: Any) -> dict[str, float]:
    """Flops and bytes accessed of a compiled computation, as XLA's cost analysis counts them.

    Args:
      compiled: what `jax.jit(f).lower(...).compile()` returns. Its
        `cost_analysis()` is a dict or, in some JAX versions, a list of one
        dict per HLO module of the executable; every module runs, so their
        counts add up.

    Returns:
      {"flops", "bytes_accessed"}, each NaN where XLA gives no count.
    """
    analysis = compiled.cost_analysis() or []
    parts = analysis if isinstance(analysis, (list, tuple)) else [analysis]

    def total(key: str) -> float:
        if not parts or any(key not in part for part in parts):
            return math.nan
        return float(sum(part[key] for part in parts))

    return {"flops": total("flops"), "bytes_accessed": total("bytes accessed")}


def plan_run(config: ml_collections.ConfigDict) -> Plan:
    """Plans `config`'s run on this machine's devices without allocating or reading data.

    The class count is `config.num_classes` and the input is
    `config.image_size` square with 3 channels. The step is compiled as one
    device runs it in data-parallel training: the whole state and
    `batch_size / device count` examples; a global batch that training
    would refuse (fmjax.core.batch_size) is refused here too. A population
    is planned as its first member's run, and its own step compiled beside.
    """
    if is_population(config):
        plan = plan_run(member_config(config, population_members(config)[0]))
        return dataclasses.replace(plan, population=_plan_population(config, plan))
    num_devices = jax.device_count()
    batch_per_device = per_device_batch_size(config.batch_size, num_devices, config.grad_accum_steps)
    # The data's size is unknown here; a schedule's length does not change the step's cost.
    parts = build(config, config.num_classes, (config.image_size, config.image_size, 3))
    model, image = parts.model, parts.input_spec()
    state = jax.eval_shape(parts.init_state)
    batch = {
        "image": jax.ShapeDtypeStruct((batch_per_device, *image.shape[1:]), np.float32),
        "label": jax.ShapeDtypeStruct((batch_per_device,), np.int32),
    }
    compiled = _compiled_step(config, state, batch)
    device = jax.devices()[0]
    layers = _layer_sizes(state.params)
    return Plan(
        layers=layers,
        total_params=sum(n for _, n in layers),
        param_bytes=_nbytes(state.params),
        grad_bytes=_nbytes(state.params),
        optimizer_bytes=_nbytes(state.opt_state),
        activation_bytes=_activation_bytes(model, state, batch, config.grad_accum_steps),
        flops_per_step=xla_cost(compiled)["flops"],
        step_memory_bytes=_step_memory(compiled),
        batch_per_device=batch_per_device,
        num_devices=num_devices,
        device_kind=device.device_kind,
        device_memory_bytes=_device_memory(device),
    )


def _step_memory(compiled: Any) -> int:
    """XLA's arguments, outputs and temporaries of a compiled step, less the buffers it reuses."""
    memory = compiled.memory_analysis()
    return int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


def _plan_population(config: ml_collections.ConfigDict, member: Plan) -> PopulationPlan:
    """`config`'s population step on one device beside another member count's, for the growth per member."""
    seeds, reference = member_seeds(config), reference_seeds(config)
    compiled = compiled_population_step(config, seeds, member.batch_per_device)
    rates = len(config.sweep.learning_rates) or 1
    memory = member.device_memory_bytes
    return PopulationPlan(
        num_members=len(seeds),
        num_seeds=len(seeds) // rates,
        num_rates=rates,
        step_memory_bytes=_step_memory(compiled),
        flops_per_step=xla_cost(compiled)["flops"],
        batch_per_device=member.batch_per_device,
        reference_members=len(reference),
        reference_bytes=_step_memory(compiled_population_step(config, reference, member.batch_per_device)),
        usable_bytes=None if memory is None else int(USABLE_MEMORY_FRACTION * memory),
    )


def _compiled_step(config: ml_collections.ConfigDict, state: Any, batch: dict) -> Any:
    """One device's train step, compiled as `config.parallel` runs it, for abstract inputs."""
    step = functools.partial(
        train_step,
        loss_fn=get_loss(config.loss),
        check_finite=config.halt_on_nonfinite,
        grad_accum_steps=config.grad_accum_steps,
    )
    if config.parallel != "pmap":
        return jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    # pmap's form on one device: a leading device axis of 1 on every input.
    with_device_axis = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype), (state, batch)
    )
    pmapped = jax.pmap(
        functools.partial(step, axis_name="data"),
        axis_name="data",
        donate_argnums=0,
        devices=jax.devices()[:1],
    )
    return pmapped.lower(*with_device_axis).compile()


def _activation_bytes(model: Any, state: Any, batch: dict, grad_accum_steps: int) -> int:
    """Bytes of the batch and of every layer's output (Flax's captured intermediates) for one micro-batch."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    _, captured = jax.eval_shape(
        functools.partial(model.apply, capture_intermediates=True, mutable=["intermediates"]),
        variables,
        jax.ShapeDtypeStruct(
            (batch["image"].shape[0] // grad_accum_steps, *batch["image"].shape[1:]),
            batch["image"].dtype,
        ),
    )
    return _nbytes(captured["intermediates"]) + _nbytes(batch)


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:,.2f} GB"


def format_plan(plan: Plan) -> str:
    """The plan as the lines `train.py --dry_run` prints."""
    width = max(len(name) for name, _ in plan.layers + [("total", 0)])
    lines = ["one member of the population, as its own run:"] if plan.population else []
    lines.append("parameters per layer:")
    lines += [f"  {name:<{width}}  {count:>15,}" for name, count in plan.layers]
    lines.append(f"  {'total':<{width}}  {plan.total_params:>15,}")
    lines += [
        f"params {_gb(plan.param_bytes)}, gradients {_gb(plan.grad_bytes)}, "
        f"optimizer state {_gb(plan.optimizer_bytes)}: {_gb(plan.state_bytes)} in all",
        f"train step on one device ({plan.batch_per_device} examples): "
        f"{plan.flops_per_step:,.0f} flops, {_gb(plan.step_memory_bytes)} of memory (XLA)",
        f"that is {plan.step_memory_bytes / plan.expected_bytes:.2f}x the state, its gradients and "
        f"the layers' outputs ({_gb(plan.activation_bytes)} of activations): "
        f"{_gb(plan.expected_bytes)}",
    ]
    memory = "memory not reported" if plan.device_memory_bytes is None else (
        f"{_gb(plan.device_memory_bytes)} each"
    )
    lines.append(f"devices: {plan.num_devices} x {plan.device_kind}, {memory}")
    if plan.population:
        return "\n".join(lines + format_population(plan.population))
    if plan.fits is None:
        lines.append("fits: unknown (the devices do not report their memory)")
    elif plan.fits:
        lines.append("fits: yes")
    else:
        needed = plan.devices_needed_with_sharding()
        advice = (
            f"set --config.parallel=jit --config.shard_params=True and use at least "
            f"{needed} devices of this size"
            if needed
            else "the activations alone exceed one device; lower batch_size or image_size"
        )
        lines.append(f"fits: no ({_gb(plan.step_memory_bytes)} needed per device); {advice}")
    return "\n".join(lines)
