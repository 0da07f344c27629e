"""Data parallelism over all devices of all processes, in the form a config asks for.

- "pmap" (fmjax.parallel.pmap): each process keeps a copy of the state on
  each of its devices; gradients are averaged with `lax.pmean`.
- "jit" (fmjax.parallel.mesh): one jit over a 1-D Mesh of every device;
  XLA inserts the gradient all-reduce, and with `shard_params` (FSDP) the
  params and optimizer state are sharded over the devices.

Both give a `DataParallel` (fmjax.parallel.interface).
"""

from typing import Optional, Sequence

import jax
import ml_collections

from fmjax.core import steps
from fmjax.core.batch_size import check_global_batch_size
from fmjax.core.losses import get_loss
from fmjax.core.population import is_population, population_members
from fmjax.errors import UserError
from fmjax.parallel.interface import DataParallel, Prepare, drop_index
from fmjax.parallel.mesh import mesh_data_parallel
from fmjax.parallel.pmap import pmap_data_parallel

PARALLEL_MODES = ("pmap", "jit")


def make_data_parallel(
    mode: str,
    loss_fn: steps.LossFn,
    *,
    eval_loss_fn: Optional[steps.LossFn] = None,
    prepare: Prepare = drop_index,
    check_finite: bool = True,
    grad_accum_steps: int = 1,
    update_in_conditional: Optional[bool] = None,
    shard_params: bool = False,
    shard_params_min_size: int = 0,
    devices: Optional[Sequence[jax.Device]] = None,
    member_seeds: Optional[Sequence[int]] = None,
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
        fmjax.core.steps.train_step).
      check_finite: whether train steps report the "finite" flag (see
        fmjax.core.steps.train_step).
      update_in_conditional: where train steps compute the update (see
        fmjax.core.steps.train_step; None: by the backend).
      shard_params: config.shard_params; "jit" only: shard the params and
        optimizer state over the devices (FSDP) instead of replicating them.
      shard_params_min_size: config.shard_params_min_size; arrays with fewer
        elements stay replicated.
      devices: "jit" only: the devices to run on (a TPU topology's, to
        compile for a slice this machine does not have); all devices when None.
      member_seeds: for a population's state (a leading member axis), each
        member's seed, for its augmentation (see per_device_steps).
    """
    step_options = {
        "check_finite": check_finite,
        "grad_accum_steps": grad_accum_steps,
        "update_in_conditional": update_in_conditional,
    }
    if mode == "pmap":
        if shard_params:
            raise UserError(
                "config.shard_params needs config.parallel='jit' (pmap keeps a whole copy "
                "on every device); set --config.parallel=jit or --config.shard_params=False"
            )
        return pmap_data_parallel(loss_fn, eval_loss_fn or loss_fn, prepare, step_options, member_seeds)
    if mode == "jit":
        return mesh_data_parallel(
            loss_fn,
            eval_loss_fn or loss_fn,
            prepare,
            step_options,
            shard_params,
            shard_params_min_size,
            devices,
            member_seeds,
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
        # Absent from the config.json of older runs.
        update_in_conditional=steps.update_in_conditional(config.optimizer.get("update_placement", "auto")),
        shard_params=config.shard_params,
        shard_params_min_size=config.shard_params_min_size,
        devices=devices,
        member_seeds=[member.seed for member in population_members(config)] if is_population(config) else None,
    )
    check_global_batch_size(
        config.batch_size,
        num_devices=parallel.num_devices,
        grad_accum_steps=config.grad_accum_steps,
    )
    return parallel
