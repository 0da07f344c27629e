"""DataParallel, the interface both parallel forms implement, and the per-device steps they compile.

Both forms, pmap (fmjax.parallel.pmap) and jit over a Mesh
(fmjax.parallel.mesh), run the same pure `train_step` and `eval_step` from
fmjax.core.steps, wrapped here into a train step, a train loop, an eval step
and an eval loop; each form compiles them its own way and fills a
`DataParallel`, so the training loop does not care which form it runs, nor
how many processes take part.

In both forms the single-copy state (what checkpoints save and restore) is
a global array per leaf, laid out by `state_sharding`: replicated on every
device, or FSDP-sharded.
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fmjax.core import steps
from fmjax.core.state import TrainState

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Compiled steps and data movement for one parallel mode.

    Batches come as pixels (see fmjax.data.dataset): {"image", "label",
    "index"} and, for evaluation, "mask"; the steps prepare them (scaling,
    augmentation, normalisation) inside the compiled program.

    Attributes:
      mode: "pmap" or "jit".
      num_devices: devices across all processes taking part.
      train_step: (device state, device batch, epoch=0) -> (device state,
        metrics); donates the input state. The epoch matters only to
        augmentation.
      train_loop: (device state, device data, device indices, epoch, start,
        count) -> (device state, metrics): the steps start .. start+count-1 of
        an epoch in one compiled loop, step i's batch gathered on the devices
        from `data` (put_data) at row i of `indices` (put_indices). metrics
        holds one [len(indices)] array per metric, set at the steps run
        ([len(indices), members] for a population; see per_device_steps).
        count and start may change between calls without a new compilation.
        Donates the input state.
      eval_step: (device state, device batch) -> summed metrics over the
        global batch (see fmjax.core.steps.eval_step).
      eval_loop: (device state, device data, device indices, device masks)
        -> summed metrics over every row of `indices`, in one compiled loop.
      put_state: single-copy state (global arrays laid out by
        state_sharding, or host arrays equal on every process) -> device state.
        It may share the input's buffers, which the train step then donates.
      put_batch: host-local numpy batch -> device batch.
      put_data: a whole split, {"image", "label"} host arrays equal on every
        process -> a copy on every device.
      put_indices: this process's [rows, local batch] indices (or masks;
        [rows, local batch, members] for a population's train order) ->
        the devices' shares of every row.
      get_state: device state -> single-copy state, laid out by
        state_sharding (for checkpoints and export).
      state_sharding: a state, or its jax.ShapeDtypeStruct tree -> a tree of
        the same structure with the sharding of each leaf's single copy (to
        create or restore a state straight into place).
    """

    mode: str
    num_devices: int
    train_step: Callable[[Any, Any, Any], tuple[Any, dict]]
    train_loop: Callable[..., tuple[Any, dict]]
    eval_step: Callable[[Any, Any], dict]
    eval_loop: Callable[..., dict]
    put_state: Callable[[TrainState], Any]
    put_batch: Callable[[dict], Any]
    put_data: Callable[[dict], Any]
    put_indices: Callable[[np.ndarray], Any]
    get_state: Callable[[Any], TrainState]
    state_sharding: Callable[[Any], Any]


Prepare = Callable[[dict, Optional[jax.Array]], dict]


def drop_index(batch: dict, epoch: Optional[jax.Array] = None) -> dict:
    """The `prepare` of pixels that need no preparing: the batch without its "index"."""
    del epoch
    return {key: value for key, value in batch.items() if key != "index"}


def per_device_steps(
    loss_fn: steps.LossFn,
    eval_loss_fn: steps.LossFn,
    prepare: Prepare,
    step_options: dict,
    axis_name: Optional[str],
    constrain_batch: Callable[[dict], dict] = lambda batch: batch,
    member_seeds: Optional[Sequence[int]] = None,
):
    """The per-device train step, train loop, eval step and eval loop, before pmap or jit.

    With `member_seeds` the state is a population's (fmjax.core.population):
    every leaf has a leading member axis, each step runs every member (jax.vmap),
    a member's augmentation is drawn from its own seed, and the train loop's
    indices are [rows, batch, member], each member's batch gathered by its own
    order. Metrics then hold one value per member.
    """
    if member_seeds is not None and step_options.get("update_in_conditional") is None:
        # Under vmap a conditional becomes a select of both branches, which costs memory.
        step_options = {**step_options, "update_in_conditional": False}

    def member_train_step(state, batch, epoch, seed=None):
        batch = constrain_batch(batch)
        batch = prepare(batch, epoch) if seed is None else prepare(batch, epoch, seed=seed)
        return steps.train_step(
            state, batch, loss_fn=loss_fn, axis_name=axis_name, **step_options
        )

    def member_eval_step(state, batch):
        return steps.eval_step(state, prepare(constrain_batch(batch), None), loss_fn=eval_loss_fn)

    def gathered(data, rows, extra):
        return {"image": data["image"][rows], "label": data["label"][rows], "index": rows, **extra}

    if member_seeds is None:
        shape = ()

        def train_step(state, batch, epoch):
            return member_train_step(state, batch, epoch)

        def loop_step(state, data, rows, epoch):
            return member_train_step(state, gathered(data, rows, {}), epoch)

        def all_eval_step(state, batch):
            return member_eval_step(state, batch)
    else:
        seeds = np.asarray(member_seeds, np.int32)
        shape = seeds.shape

        def train_step(state, batch, epoch):
            return jax.vmap(member_train_step, in_axes=(0, None, None, 0))(state, batch, epoch, seeds)

        def loop_step(state, data, rows, epoch):
            def one(member_state, member_rows, seed):
                return member_train_step(member_state, gathered(data, member_rows, {}), epoch, seed)

            return jax.vmap(one, in_axes=(0, 1, 0))(state, rows, seeds)

        def all_eval_step(state, batch):
            return jax.vmap(member_eval_step, in_axes=(0, None))(state, batch)

    def train_loop(state, data, indices, epoch, start, count):
        num_rows = indices.shape[0]
        metrics = {"loss": jnp.zeros((num_rows, *shape)), "accuracy": jnp.zeros((num_rows, *shape))}
        if step_options["check_finite"]:
            metrics["finite"] = jnp.ones((num_rows, *shape), bool)

        def body(i, carry):
            state, metrics = carry
            state, step_metrics = loop_step(state, data, indices[i], epoch)
            return state, {k: metrics[k].at[i].set(step_metrics[k]) for k in metrics}

        return jax.lax.fori_loop(start, start + count, body, (state, metrics))

    def eval_step(state, batch):
        sums = all_eval_step(state, batch)
        return jax.lax.psum(sums, axis_name) if axis_name else sums

    def eval_loop(state, data, indices, masks):
        def batch(i):
            return gathered(data, indices[i], {"mask": masks[i]})

        totals = jax.tree.map(
            lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(eval_step, state, batch(0))
        )
        return jax.lax.fori_loop(
            0,
            indices.shape[0],
            lambda i, totals: jax.tree.map(jnp.add, totals, eval_step(state, batch(i))),
            totals,
        )

    return train_step, train_loop, eval_step, eval_loop


def with_default_epoch(step: Callable) -> Callable:
    """`step` with its epoch argument optional, 0 by default (it matters only to augmentation)."""
    return lambda state, batch, epoch=0: step(state, batch, epoch)


def global_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D Mesh over `devices` (default: every device of every process), along DATA_AXIS."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))
