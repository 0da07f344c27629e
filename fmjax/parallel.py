"""Data parallelism over all devices of all processes: the pmap form and the Mesh-jit form.

Both run the same pure `train_step` and `eval_step` from fmjax.steps. A
`DataParallel` holds the compiled steps and the functions that move a state
and a host-local batch onto the devices, so the training loop does not care
which form it runs, nor how many processes take part.

- "pmap": each process keeps a copy of the state on each of its devices
  (a leading device axis) and splits its host-local batch along a new
  leading axis; gradients are averaged over every device of every process
  with `lax.pmean` inside the step.
- "jit": one jit over a 1-D Mesh of every device; the batch is a global
  array sharded along its first axis, built from each process's share; XLA
  inserts the gradient all-reduce. With `shard_params` (FSDP), the params and
  optimizer state are sharded over the same axis, so each device holds
  1/num_devices of every large array (see `fsdp_partition_spec`) and a model
  larger than one device's memory trains on several.

In both forms the single-copy state (what checkpoints save and restore) is
a global array per leaf, laid out by `state_sharding`: replicated on every
device, or FSDP-sharded.
"""

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fmjax import steps
from fmjax.errors import UserError
from fmjax.losses import get_loss
from fmjax.state import TrainState

PARALLEL_MODES = ("pmap", "jit")
DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Compiled steps and data movement for one parallel mode.

    Batches come as pixels (see fmjax.data.pipeline): {"image", "label",
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
        holds one [len(indices)] array per metric, set at the steps run.
        count and start may change between calls without a new compilation.
        Donates the input state.
      eval_step: (device state, device batch) -> summed metrics over the
        global batch (see fmjax.steps.eval_step).
      eval_loop: (device state, device data, device indices, device masks)
        -> summed metrics over every row of `indices`, in one compiled loop.
      put_state: single-copy state (global arrays laid out by
        state_sharding, or host arrays equal on every process) -> device state.
        It may share the input's buffers, which the train step then donates.
      put_batch: host-local numpy batch -> device batch.
      put_data: a whole split, {"image", "label"} host arrays equal on every
        process -> a copy on every device.
      put_indices: this process's [rows, local batch] indices (or masks) ->
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


def _step_functions(
    loss_fn: steps.LossFn,
    eval_loss_fn: steps.LossFn,
    prepare: Prepare,
    step_options: dict,
    axis_name: Optional[str],
    constrain_batch: Callable[[dict], dict] = lambda batch: batch,
):
    """The per-device train step, train loop, eval step and eval loop, before pmap or jit."""

    def train_step(state, batch, epoch):
        batch = prepare(constrain_batch(batch), epoch)
        return steps.train_step(
            state, batch, loss_fn=loss_fn, axis_name=axis_name, **step_options
        )

    def gathered(data, rows, extra):
        return {"image": data["image"][rows], "label": data["label"][rows], "index": rows, **extra}

    def train_loop(state, data, indices, epoch, start, count):
        num_rows = indices.shape[0]
        metrics = {"loss": jnp.zeros(num_rows), "accuracy": jnp.zeros(num_rows)}
        if step_options["check_finite"]:
            metrics["finite"] = jnp.ones(num_rows, bool)

        def body(i, carry):
            state, metrics = carry
            state, step_metrics = train_step(state, gathered(data, indices[i], {}), epoch)
            return state, {k: metrics[k].at[i].set(step_metrics[k]) for k in metrics}

        return jax.lax.fori_loop(start, start + count, body, (state, metrics))

    def eval_step(state, batch):
        sums = steps.eval_step(state, prepare(constrain_batch(batch), None), loss_fn=eval_loss_fn)
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


def check_batch_size(global_batch_size: int, num_devices: int, grad_accum_steps: int = 1) -> None:
    """Raises a UserError unless the global batch splits evenly over the devices and micro-batches."""
    if grad_accum_steps == 1 and global_batch_size % num_devices:
        raise UserError(
            f"config.batch_size={global_batch_size} does not divide by the "
            f"{num_devices} devices; set it to a multiple of {num_devices}"
        )
    parts = num_devices * grad_accum_steps
    if global_batch_size % parts:
        raise UserError(
            f"config.batch_size={global_batch_size} does not split into {num_devices} "
            f"device{'s' * (num_devices != 1)} x "
            f"{grad_accum_steps} micro-batches (config.grad_accum_steps); set it to a multiple of {parts}"
        )


def make_data_parallel(
    mode: str,
    loss_fn: steps.LossFn,
    *,
    eval_loss_fn: Optional[steps.LossFn] = None,
    prepare: Prepare = drop_index,
    check_finite: bool = True,
    grad_accum_steps: int = 1,
    shard_params: bool = False,
    shard_params_min_size: int = 0,
    devices: Optional[Sequence[jax.Device]] = None,
) -> DataParallel:
    """Builds the data-parallel steps for `mode` ("pmap" or "jit") on every device of every process.

    Args:
      mode: config.parallel.
      loss_fn: (logits, labels, mask) -> scalar mean loss, for training.
      eval_loss_fn: the loss evaluation reports; `loss_fn` when None.
      prepare: (pixel batch, epoch or None) -> the model's input batch, run
        inside the steps (fmjax.data.Dataset.prepare); by default the batch
        is the model's input already.
      grad_accum_steps: micro-batches per device batch (see
        fmjax.steps.train_step).
      check_finite: whether train steps report the "finite" flag (see
        fmjax.steps.train_step).
      shard_params: config.shard_params; "jit" only: shard the params and
        optimizer state over the devices (FSDP) instead of replicating them.
      shard_params_min_size: config.shard_params_min_size; arrays with fewer
        elements stay replicated.
      devices: "jit" only: the devices to run on (a TPU topology's, to
        compile for a slice this machine does not have); all devices when None.
    """
    step_options = {"check_finite": check_finite, "grad_accum_steps": grad_accum_steps}
    if mode == "pmap":
        if shard_params:
            raise UserError(
                "config.shard_params needs config.parallel='jit' (pmap keeps a whole copy "
                "on every device); set --config.parallel=jit or --config.shard_params=False"
            )
        return _pmap_parallel(loss_fn, eval_loss_fn or loss_fn, prepare, step_options)
    if mode == "jit":
        return _jit_parallel(
            loss_fn,
            eval_loss_fn or loss_fn,
            prepare,
            step_options,
            shard_params,
            shard_params_min_size,
            devices,
        )
    raise UserError(f"config.parallel is {mode!r}; use one of {', '.join(PARALLEL_MODES)}")


def parallel_from_config(
    config: ml_collections.ConfigDict,
    prepare: Prepare = drop_index,
    devices: Optional[Sequence[jax.Device]] = None,
) -> DataParallel:
    """The DataParallel that `config` asks for, its global batch checked against the devices.

    Training uses `config.loss` with `config.label_smoothing`; evaluation
    reports the plain loss, comparable across runs. `prepare` is the data
    set's (fmjax.data.Dataset.prepare); `devices` as make_data_parallel's.
    """
    parallel = make_data_parallel(
        config.parallel,
        get_loss(config.loss, config.label_smoothing),
        eval_loss_fn=get_loss(config.loss),
        prepare=prepare,
        check_finite=config.halt_on_nonfinite,
        grad_accum_steps=config.grad_accum_steps,
        shard_params=config.shard_params,
        shard_params_min_size=config.shard_params_min_size,
        devices=devices,
    )
    check_batch_size(config.batch_size, parallel.num_devices, config.grad_accum_steps)
    return parallel


def global_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D Mesh over `devices` (default: every device of every process), along DATA_AXIS."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


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


def _pmap_parallel(
    loss_fn: steps.LossFn, eval_loss_fn: steps.LossFn, prepare: Prepare, step_options: dict
) -> DataParallel:
    num_local = jax.local_device_count()
    mesh = global_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    train_step, train_loop, eval_step, eval_loop = _step_functions(
        loss_fn, eval_loss_fn, prepare, step_options, axis_name=DATA_AXIS
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
        train_step=_with_default_epoch(metrics_of_first_device(train)),
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


def _with_default_epoch(step: Callable) -> Callable:
    return lambda state, batch, epoch=0: step(state, batch, epoch)


def _shard_on(x: jax.Array, device: jax.Device) -> jax.Array:
    """The piece of `x` on `device`, one of this process's devices."""
    return next(shard.data for shard in x.addressable_shards if shard.device == device)


def _process_local_copy(x: Any) -> Any:
    """One copy of a replicated leaf on this process's devices (the leaf itself if it is local)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_data(0)
    return x


def _put_leaf(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """`x` laid out by `sharding`: moved if it is a global array, else built from this process's whole copy."""
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)
    # Host data or a local array, the same on every process: device_put
    # refuses local arrays (and PRNG keys) for devices of other processes.
    return jax.make_array_from_process_local_data(sharding, x, np.shape(x))


def _jit_parallel(
    loss_fn: steps.LossFn,
    eval_loss_fn: steps.LossFn,
    prepare: Prepare,
    step_options: dict,
    shard_params: bool,
    min_size: int,
    devices: Optional[Sequence[jax.Device]] = None,
) -> DataParallel:
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

    train_step, train_loop, eval_step, eval_loop = _step_functions(
        loss_fn,
        eval_loss_fn,
        prepare,
        step_options,
        axis_name=None,
        constrain_batch=lambda batch: constrain(batch, batch_sharding),
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
        global_shape = (rows.shape[0], rows.shape[1] * jax.process_count())
        return jax.make_array_from_process_local_data(rows_sharding, rows, global_shape)

    return DataParallel(
        mode="jit",
        num_devices=mesh.size,
        train_step=_with_default_epoch(jax.jit(sharded_train_step, donate_argnums=(0,))),
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
