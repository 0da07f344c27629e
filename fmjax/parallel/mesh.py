"""The jit form of data parallelism: one jit over a Mesh of every device, and FSDP.

One jit over a 1-D Mesh of every device; the batch is a global array
sharded along its first axis, built from each process's share; XLA inserts
the gradient all-reduce. With `shard_params` (FSDP), the params and
optimizer state are sharded over the same axis, so each device holds
1/num_devices of every large array (see `fsdp_partition_spec`) and a model
larger than one device's memory trains on several.
"""

import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from fmjax.core import steps
from fmjax.core.state import TrainState
from fmjax.parallel.interface import (
    DATA_AXIS,
    DataParallel,
    Prepare,
    global_mesh,
    per_device_steps,
    with_default_epoch,
)


def fsdp_partition_spec(
    shape: Sequence[int], num_shards: int, min_size: int
) -> PartitionSpec:
    """How FSDP splits an array of `shape`: along its last dimension that divides by num_shards.

    For a Dense or Conv kernel the last dimension is its output features, so
    each device computes its share of the outputs from the gathered (small)
    activations; split along its inputs, XLA gathers the whole (large) kernel
    and its gradient on every device instead. An array with fewer than
    `min_size` elements, or with no dimension that divides, stays replicated
    (PartitionSpec()): its copies cost little, and an uneven split would pad.
    """
    if math.prod(shape) < min_size:
        return PartitionSpec()
    divisible = [axis for axis, size in enumerate(shape) if size % num_shards == 0]
    if not divisible:
        return PartitionSpec()
    return PartitionSpec(*(DATA_AXIS if axis == divisible[-1] else None for axis in range(len(shape))))


def _put_leaf(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """`x` laid out by `sharding`: moved if it is a global array, else built from this process's whole copy."""
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)
    # Host data or a local array, the same on every process: device_put
    # refuses local arrays (and PRNG keys) for devices of other processes.
    return jax.make_array_from_process_local_data(sharding, x, np.shape(x))


def mesh_data_parallel(
    loss_fn: steps.LossFn,
    eval_loss_fn: steps.LossFn,
    prepare: Prepare,
    step_options: dict,
    shard_params: bool,
    min_size: int,
    devices: Optional[Sequence[jax.Device]] = None,
    member_seeds: Optional[Sequence[int]] = None,
) -> DataParallel:
    """The DataParallel of jit over a Mesh; see fmjax.parallel.data_parallel.make_data_parallel for the arguments."""
    mesh = global_mesh(devices)
    # On one device, plain device arrays: any sharding constraint, or inputs
    # laid out over a mesh, send the program through XLA's partitioner,
    # which on CPU made the seed's step 1.7x slower (22 ms against 37 ms at
    # 16x16, batch 64), and a state laid out two ways compiles twice.
    one_device = mesh.size == 1
    replicated = (
        jax.sharding.SingleDeviceSharding(mesh.devices.flat[0])
        if one_device
        else NamedSharding(mesh, PartitionSpec())
    )
    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    rows_sharding = NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))

    def state_sharding(state):
        if not shard_params or one_device:
            return jax.tree.map(lambda _: replicated, state)
        return jax.tree.map(
            lambda x: NamedSharding(mesh, fsdp_partition_spec(x.shape, mesh.size, min_size)),
            state,
        )

    # The state's layout follows from its shapes, so the steps set it inside
    # rather than through in/out_shardings, which would tie them to one
    # model object (a TrainState's apply_fn and tx are part of its tree).
    def constrain(tree, sharding):
        if one_device:
            return tree
        return jax.lax.with_sharding_constraint(tree, sharding)

    def laid_out(state):
        return constrain(state, state_sharding(state))

    train_step, train_loop, eval_step, eval_loop = per_device_steps(
        loss_fn,
        eval_loss_fn,
        prepare,
        step_options,
        axis_name=None,
        constrain_batch=lambda batch: constrain(batch, batch_sharding),
        member_seeds=member_seeds,
    )

    def sharded_train_step(state, batch, epoch):
        state, metrics = train_step(laid_out(state), batch, epoch)
        return laid_out(state), constrain(metrics, replicated)

    def sharded_train_loop(state, data, indices, epoch, start, count):
        state, metrics = train_loop(laid_out(state), data, indices, epoch, start, count)
        return laid_out(state), constrain(metrics, replicated)

    def sharded_eval_step(state, batch):
        return constrain(eval_step(laid_out(state), batch), replicated)

    def sharded_eval_loop(state, data, indices, masks):
        return constrain(eval_loop(laid_out(state), data, indices, masks), replicated)

    def put_batch(batch):
        if one_device:
            return jax.device_put(batch, replicated)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(batch_sharding, x), batch
        )

    def put_indices(rows):
        if one_device:
            return jax.device_put(rows, replicated)
        global_shape = (rows.shape[0], rows.shape[1] * jax.process_count(), *rows.shape[2:])
        return jax.make_array_from_process_local_data(rows_sharding, rows, global_shape)

    return DataParallel(
        mode="jit",
        num_devices=mesh.size,
        train_step=with_default_epoch(jax.jit(sharded_train_step, donate_argnums=(0,))),
        train_loop=jax.jit(sharded_train_loop, donate_argnums=(0,)),
        eval_step=jax.jit(sharded_eval_step),
        eval_loop=jax.jit(sharded_eval_loop),
        put_state=lambda state: jax.tree.map(_put_leaf, state, state_sharding(state)),
        put_batch=put_batch,
        put_data=lambda data: jax.tree.map(lambda x: _put_leaf(x, replicated), data),
        put_indices=put_indices,
        get_state=lambda state: state,
        state_sharding=state_sharding,
    )


def abstract_state(
    state_fn: Callable[[], TrainState],
    sharding: Union[jax.sharding.Sharding, Callable[[Any], Any], Any],
) -> TrainState:
    """The shapes, dtypes and shardings of `state_fn()`'s state, without computing it.

    Args:
      state_fn: returns a fresh TrainState; only traced.
      sharding: one sharding for every leaf; a tree of shardings shaped like
        the state; or a function from the state's shapes to such a tree
        (DataParallel.state_sharding).
    """
    shapes = jax.eval_shape(state_fn)
    if isinstance(sharding, jax.sharding.Sharding):
        shardings = [sharding] * len(jax.tree.leaves(shapes))
    elif callable(sharding):
        shardings = jax.tree.leaves(sharding(shapes))
    else:
        shardings = jax.tree.leaves(sharding)
    leaves, treedef = jax.tree.flatten(shapes)
    return jax.tree.unflatten(
        treedef,
        [
            jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=leaf_sharding)
            for s, leaf_sharding in zip(leaves, shardings, strict=True)
        ],
    )
