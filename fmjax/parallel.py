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
import functools
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

    Attributes:
      mode: "pmap" or "jit".
      num_devices: devices across all processes taking part.
      train_step: (device state, device batch) -> (device state, metrics);
        donates the input state.
      eval_step: (device state, device batch) -> summed metrics over the
        global batch (see fmjax.steps.eval_step).
      put_state: single-copy state (global arrays laid out by
        state_sharding, or host arrays equal on every process) -> device state.
      put_batch: host-local numpy batch -> device batch.
      get_state: device state -> single-copy state, laid out by
        state_sharding (for checkpoints and export).
      state_sharding: a state, or its jax.ShapeDtypeStruct tree -> a tree of
        the same structure with the sharding of each leaf's single copy (to
        create or restore a state straight into place).
    """

    mode: str
    num_devices: int
    train_step: Callable[[Any, Any], tuple[Any, dict]]
    eval_step: Callable[[Any, Any], dict]
    put_state: Callable[[TrainState], Any]
    put_batch: Callable[[dict], Any]
    get_state: Callable[[Any], TrainState]
    state_sharding: Callable[[Any], Any]


def check_batch_size(global_batch_size: int, num_devices: int) -> None:
    """Raises a UserError unless the global batch splits evenly over the devices."""
    if global_batch_size % num_devices:
        raise UserError(
            f"config.batch_size={global_batch_size} does not divide by the "
            f"{num_devices} devices; set it to a multiple of {num_devices}"
        )


def make_data_parallel(
    mode: str,
    loss_fn: steps.LossFn,
    *,
    eval_loss_fn: Optional[steps.LossFn] = None,
    check_finite: bool = True,
    shard_params: bool = False,
    shard_params_min_size: int = 0,
) -> DataParallel:
    """Builds the data-parallel steps for `mode` ("pmap" or "jit") on every device of every process.

    Args:
      mode: config.parallel.
      loss_fn: (logits, labels, mask) -> scalar mean loss, for training.
      eval_loss_fn: the loss evaluation reports; `loss_fn` when None.
      check_finite: whether train steps report the "finite" flag (see
        fmjax.steps.train_step).
      shard_params: config.shard_params; "jit" only: shard the params and
        optimizer state over the devices (FSDP) instead of replicating them.
      shard_params_min_size: config.shard_params_min_size; arrays with fewer
        elements stay replicated.
    """
    if mode == "pmap":
        if shard_params:
            raise UserError(
                "config.shard_params needs config.parallel='jit' (pmap keeps a whole copy "
                "on every device); set --config.parallel=jit or --config.shard_params=False"
            )
        return _pmap_parallel(loss_fn, eval_loss_fn or loss_fn, check_finite)
    if mode == "jit":
        return _jit_parallel(
            loss_fn, eval_loss_fn or loss_fn, check_finite, shard_params, shard_params_min_size
        )
    raise UserError(f"config.parallel is {mode!r}; use one of {', '.join(PARALLEL_MODES)}")


def parallel_from_config(config: ml_collections.ConfigDict) -> DataParallel:
    """The DataParallel that `config` asks for, its global batch checked against the devices.

    Training uses `config.loss` with `config.label_smoothing`; evaluation
    reports the plain loss, comparable across runs.
    """
    parallel = make_data_parallel(
        config.parallel,
        get_loss(config.loss, config.label_smoothing),
        eval_loss_fn=get_loss(config.loss),
        check_finite=config.halt_on_nonfinite,
        shard_params=config.shard_params,
        shard_params_min_size=config.shard_params_min_size,
    )
    check_batch_size(config.batch_size, parallel.num_devices)
    return parallel


def global_mesh() -> Mesh:
    """A 1-D Mesh over every device of every process, along DATA_AXIS."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


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
    loss_fn: steps.LossFn, eval_loss_fn: steps.LossFn, check_finite: bool
) -> DataParallel:
    num_local = jax.local_device_count()
    mesh = global_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    train = jax.pmap(
        functools.partial(
            steps.train_step, loss_fn=loss_fn, axis_name=DATA_AXIS, check_finite=check_finite
        ),
        axis_name=DATA_AXIS,
        donate_argnums=(0,),
    )

    def summed_eval(state, batch):
        return jax.lax.psum(steps.eval_step(state, batch, loss_fn=eval_loss_fn), DATA_AXIS)

    evaluate = jax.pmap(summed_eval, axis_name=DATA_AXIS)
    local_mesh = Mesh(np.asarray(jax.local_devices()), (DATA_AXIS,))
    copy_per_local_device = jax.jit(
        lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (num_local, *x.shape)), tree),
        out_shardings=NamedSharding(local_mesh, PartitionSpec(DATA_AXIS)),
    )
    drop_device_axis = jax.jit(lambda leaves: [x[0] for x in leaves])

    # pmap's outputs are process-local: [num_local, ...] over this process's devices.
    def train_step(state, batch):
        state, metrics = train(state, batch)
        return state, jax.tree.map(lambda m: m[0], metrics)

    def eval_step(state, batch):
        return jax.tree.map(lambda m: m[0], evaluate(state, batch))

    def put_state(state):
        local_state = jax.tree.map(_process_local_copy, state)
        return copy_per_local_device(
            jax.device_put(local_state, NamedSharding(local_mesh, PartitionSpec()))
        )

    def put_batch(batch):
        return jax.tree.map(
            lambda x: x.reshape((num_local, x.shape[0] // num_local) + x.shape[1:]), batch
        )

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
        train_step=train_step,
        eval_step=eval_step,
        put_state=put_state,
        put_batch=put_batch,
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
    check_finite: bool,
    shard_params: bool,
    min_size: int,
) -> DataParallel:
    mesh = global_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

    def state_sharding(state):
        if not shard_params:
            return jax.tree.map(lambda _: replicated, state)
        return jax.tree.map(
            lambda x: NamedSharding(mesh, fsdp_partition_spec(x.shape, mesh.size, min_size)),
            state,
        )

    # The state's layout follows from its shapes, so the steps set it inside
    # rather than through in/out_shardings, which would tie them to one
    # model object (a TrainState's apply_fn and tx are part of its tree).
    def laid_out(state):
        return jax.lax.with_sharding_constraint(state, state_sharding(state))

    def sharded_train_step(state, batch):
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        state, metrics = steps.train_step(
            laid_out(state), batch, loss_fn=loss_fn, check_finite=check_finite
        )
        return laid_out(state), jax.lax.with_sharding_constraint(metrics, replicated)

    def sharded_eval_step(state, batch):
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        sums = steps.eval_step(laid_out(state), batch, loss_fn=eval_loss_fn)
        return jax.lax.with_sharding_constraint(sums, replicated)

    train = jax.jit(sharded_train_step, donate_argnums=(0,))
    evaluate = jax.jit(sharded_eval_step)

    def put_batch(batch):
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(batch_sharding, x), batch
        )

    return DataParallel(
        mode="jit",
        num_devices=jax.device_count(),
        train_step=train,
        eval_step=evaluate,
        put_state=lambda state: jax.tree.map(_put_leaf, state, state_sharding(state)),
        put_batch=put_batch,
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
