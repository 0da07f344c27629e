"""Data parallelism over all devices: the pmap form and the Mesh-jit form.

Both run the same pure `train_step` and `eval_step` from fmjax.steps. A
`DataParallel` holds the compiled steps and the functions that move a state
and a host-local batch onto the devices, so the training loop does not care
which form it runs.

- "pmap": the state is replicated with a leading device axis; the host-local
  batch is split along a new leading axis; gradients are averaged with
  `lax.pmean` inside the step.
- "jit": one jit over a 1-D device Mesh; the batch is a global array sharded
  along its first axis and the state is replicated; XLA inserts the
  gradient all-reduce.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fmjax import steps
from fmjax.errors import UserError
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
      put_state: single-copy state -> device state.
      put_batch: host-local numpy batch -> device batch.
      get_state: device state -> single-copy state (for checkpoints and export).
      state_sharding: the sharding a single-copy state is restored into.
    """

    mode: str
    num_devices: int
    train_step: Callable[[Any, Any], tuple[Any, dict]]
    eval_step: Callable[[Any, Any], dict]
    put_state: Callable[[TrainState], Any]
    put_batch: Callable[[dict], Any]
    get_state: Callable[[Any], TrainState]
    state_sharding: jax.sharding.Sharding


def check_batch_size(global_batch_size: int, num_devices: int) -> None:
    """Raises a UserError unless the global batch splits evenly over the devices."""
    if global_batch_size % num_devices:
        raise UserError(
            f"config.batch_size={global_batch_size} does not divide by the "
            f"{num_devices} devices; set it to a multiple of {num_devices}"
        )


def make_data_parallel(mode: str, loss_fn: steps.LossFn) -> DataParallel:
    """Builds the data-parallel steps for `mode` ("pmap" or "jit") on all devices."""
    if mode == "pmap":
        return _pmap_parallel(loss_fn)
    if mode == "jit":
        return _jit_parallel(loss_fn)
    raise UserError(f"config.parallel is {mode!r}; use one of {', '.join(PARALLEL_MODES)}")


def _pmap_parallel(loss_fn: steps.LossFn) -> DataParallel:
    num_local = jax.local_device_count()
    train = jax.pmap(
        functools.partial(steps.train_step, loss_fn=loss_fn, axis_name=DATA_AXIS),
        axis_name=DATA_AXIS,
        donate_argnums=(0,),
    )

    def summed_eval(state, batch):
        return jax.lax.psum(steps.eval_step(state, batch, loss_fn=loss_fn), DATA_AXIS)

    evaluate = jax.pmap(summed_eval, axis_name=DATA_AXIS)

    def train_step(state, batch):
        state, metrics = train(state, batch)
        return state, jax.tree.map(lambda m: m[0], metrics)

    def eval_step(state, batch):
        return jax.tree.map(lambda m: m[0], evaluate(state, batch))

    def put_batch(batch):
        return jax.tree.map(
            lambda x: x.reshape((num_local, x.shape[0] // num_local) + x.shape[1:]), batch
        )

    return DataParallel(
        mode="pmap",
        num_devices=jax.device_count(),
        train_step=train_step,
        eval_step=eval_step,
        put_state=flax.jax_utils.replicate,
        put_batch=put_batch,
        get_state=flax.jax_utils.unreplicate,
        state_sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
    )


def _jit_parallel(loss_fn: steps.LossFn) -> DataParallel:
    mesh = Mesh(np.asarray(jax.devices()), (DATA_AXIS,))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    train = jax.jit(
        functools.partial(steps.train_step, loss_fn=loss_fn),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    evaluate = jax.jit(
        functools.partial(steps.eval_step, loss_fn=loss_fn),
        in_shardings=(replicated, batch_sharding),
        out_shardings=replicated,
    )

    def put_batch(batch):
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(batch_sharding, x), batch
        )

    return DataParallel(
        mode="jit",
        num_devices=jax.device_count(),
        train_step=train,
        eval_step=evaluate,
        put_state=lambda state: jax.device_put(state, replicated),
        put_batch=put_batch,
        get_state=lambda state: state,
        state_sharding=replicated,
    )


def abstract_state(state_fn: Callable[[], TrainState], sharding) -> TrainState:
    """The shapes, dtypes and `sharding` of `state_fn()`'s state, without computing it."""
    shapes = jax.eval_shape(state_fn)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes
    )
