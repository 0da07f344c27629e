"""The pmap form of data parallelism: a copy of the state on every device.

Each process keeps a copy of the state on each of its devices (a leading
device axis) and splits its host-local batch along a new leading axis;
gradients are averaged over every device of every process with `lax.pmean`
inside the step. The single-copy state is a global array replicated on
every device.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fmjax.core import steps
from fmjax.parallel.interface import (
    DATA_AXIS,
    DataParallel,
    Prepare,
    global_mesh,
    per_device_steps,
    with_default_epoch,
)


def pmap_data_parallel(
    loss_fn: steps.LossFn,
    eval_loss_fn: steps.LossFn,
    prepare: Prepare,
    step_options: dict,
    member_seeds: Optional[Sequence[int]] = None,
) -> DataParallel:
    """The DataParallel of pmap; see fmjax.parallel.data_parallel.make_data_parallel for the arguments."""
    num_local = jax.local_device_count()
    mesh = global_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    train_step, train_loop, eval_step, eval_loop = per_device_steps(
        loss_fn, eval_loss_fn, prepare, step_options, axis_name=DATA_AXIS, member_seeds=member_seeds
    )
    # Scalars (epoch, start, count) are the same on every device.
    train = jax.pmap(train_step, DATA_AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
    loop = jax.pmap(
        train_loop, DATA_AXIS, in_axes=(0, 0, 0, None, None, None), donate_argnums=(0,)
    )
    evaluate = jax.pmap(eval_step, DATA_AXIS)
    evaluate_all = jax.pmap(eval_loop, DATA_AXIS)
    local_mesh = Mesh(np.asarray(jax.local_devices()), (DATA_AXIS,))
    per_local_device = NamedSharding(local_mesh, PartitionSpec(DATA_AXIS))
    copy_per_local_device = jax.jit(
        lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (num_local, *x.shape)), tree),
        out_shardings=per_local_device,
    )
    drop_device_axis = jax.jit(lambda leaves: [x[0] for x in leaves])

    def first_copy(tree):
        # pmap's outputs are process-local: [num_local, ...] over this process's devices.
        return jax.tree.map(lambda m: m[0], tree)

    def metrics_of_first_device(step):
        def run(*args):
            state, metrics = step(*args)
            return state, first_copy(metrics)

        return run

    def put_state(state):
        local_state = jax.tree.map(_process_local_copy, state)
        return copy_per_local_device(
            jax.device_put(local_state, NamedSharding(local_mesh, PartitionSpec()))
        )

    def split_over_local_devices(x, axis):
        shape = x.shape[:axis] + (num_local, x.shape[axis] // num_local) + x.shape[axis + 1 :]
        return np.moveaxis(np.asarray(x).reshape(shape), axis, 0)

    def put_batch(batch):
        return jax.device_put(
            jax.tree.map(lambda x: split_over_local_devices(x, 0), batch), per_local_device
        )

    def copy_on_each_local_device(x):
        # One transfer per device, with no staging copy on a first device.
        copies = [jax.device_put(np.asarray(x)[None], device) for device in jax.local_devices()]
        return jax.make_array_from_single_device_arrays((num_local, *x.shape), per_local_device, copies)

    def get_state(device_state):
        # Orbax saves arrays that span processes, not one process's copies:
        # every device's copy becomes a piece of one global replicated array,
        # with no communication since each device already holds a whole copy.
        leaves, treedef = jax.tree.flatten(device_state)
        copies = {
            device: drop_device_axis([_shard_on(x, device) for x in leaves])
            for device in jax.local_devices()
        }
        return treedef.unflatten(
            [
                jax.make_array_from_single_device_arrays(
                    x.shape[1:], replicated, [copies[device][i] for device in copies]
                )
                for i, x in enumerate(leaves)
            ]
        )

    return DataParallel(
        mode="pmap",
        num_devices=jax.device_count(),
        train_step=with_default_epoch(metrics_of_first_device(train)),
        train_loop=metrics_of_first_device(loop),
        eval_step=lambda state, batch: first_copy(evaluate(state, batch)),
        eval_loop=lambda state, data, indices, masks: first_copy(
            evaluate_all(state, data, indices, masks)
        ),
        put_state=put_state,
        put_batch=put_batch,
        put_data=lambda data: jax.tree.map(copy_on_each_local_device, data),
        put_indices=lambda rows: jax.device_put(split_over_local_devices(rows, 1), per_local_device),
        get_state=get_state,
        state_sharding=lambda state: jax.tree.map(lambda _: replicated, state),
    )


def _shard_on(x: jax.Array, device: jax.Device) -> jax.Array:
    """The piece of `x` on `device`, one of this process's devices."""
    return next(shard.data for shard in x.addressable_shards if shard.device == device)


def _process_local_copy(x: Any) -> Any:
    """One copy of a replicated leaf on this process's devices (the leaf itself if it is local)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_data(0)
    return x
