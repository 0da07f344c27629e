"""train_and_evaluate(config, workdir): the training loop, read top to bottom.

config -> data -> model and optimizer -> state (fresh or resumed) -> one loop
of compiled calls, each a few steps, with the host's events between them:
checkpoints, the epochs' evaluation and logs, SIGTERM.

Nothing is lost when a run stops. A checkpoint holds the state (params,
optimizer state, step, rng, batch statistics) and a record
(fmjax.run.record): the epochs logged and the epoch's train-metric sums so
far. The data position is the state's step (an epoch's order is a function of
the seed and the epoch), so a run killed at any point and started again with
the same command ends with the same params, bit for bit, as a run never
stopped; metrics.jsonl is cut back to the epochs the checkpoint holds and goes
on from there. A SIGTERM saves at the next call's end and raises Preempted; a
NaN or Inf raises NonFiniteError before anything non-finite is saved.
"""

import contextlib
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from fmjax.core.build import build
from fmjax.core.state import step_number
from fmjax.data import cache_placement, load_dataset
from fmjax.parallel.data_parallel import parallel_from_config
from fmjax.parallel.mesh import abstract_state
from fmjax.run import checkpoint as ckpt
from fmjax.run import identity as run_identity
from fmjax.run import rundir
from fmjax.run.checkpoint_damage import restore_newest_readable
from fmjax.run.checkpoint_reads import newest_meta
from fmjax.run.config_checks import check_config
from fmjax.run.divergence import HealthCheck, LossGrowthError, NonFiniteError
from fmjax.run.lock import hold_workdir
from fmjax.run.logs import (
    EpochRecords,
    Progress,
    epoch_record,
    images_per_second,
    is_logging_process,
    log,
)
from fmjax.run.pacing import Cadence, CheckpointClock, StepProfile, StepsPerCall
from fmjax.run.placement import place_data
from fmjax.run.preemption import Preempted, watch_for_sigterm
from fmjax.run.record import CheckpointRecord, TrainSums
from fmjax.run.runtime import use_compilation_cache, use_freed_memory_again

__all__ = ["LossGrowthError", "NonFiniteError", "Preempted", "train_and_evaluate"]


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> dict[str, Any]:
    """Trains the model that `config` describes, resuming from `workdir` if it holds a checkpoint.

    Args:
      config: a config from configs/ (see fmjax.config.base_config for every key).
      workdir: where checkpoints, config.json and metrics.jsonl go.
      allow_config_change: resume even if the config or data differ from the
        checkpoint's (see fmjax.run.identity); the changes are recorded.

    Returns:
      The last epoch's metrics (the keys of metrics.jsonl).

    Raises:
      UserError: a mistake in the config, the data or the workdir (another
        training running in it, say).
      Preempted: a SIGTERM stopped the run after it saved a checkpoint.
      NonFiniteError: a step became NaN or Inf (with config.halt_on_nonfinite).
      LossGrowthError: the loss grew past config.halt_on_loss_growth times the first.
      fmjax.run.checkpoint.CheckpointWriteError: a checkpoint could not be written.
    """
    check_config(config)
    rundir.refuse_workdir_in_checkpoints(workdir)
    # ---- Data, devices and the run's parts.
    use_freed_memory_again()
    use_compilation_cache(config.compilation_cache_dir)
    dataset = load_dataset(config, report=log)
    parallel = parallel_from_config(config, prepare=dataset.prepare)
    steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
    parts = build(config, dataset.num_classes, dataset.image_shape, steps_per_epoch)
    cadence = Cadence(steps_per_epoch, config.checkpoint_every_steps)
    identity = run_identity.run_record(config, dataset.class_names, dataset.num_train)
    # A resume continues the same run: refused, touching nothing, if it is not.
    config_changes = run_identity.check_resume(
        newest_meta(workdir), identity, workdir, allow_config_change, warn=log
    )

    with contextlib.ExitStack() as on_exit:
        on_exit.enter_context(hold_workdir(workdir))
        should_stop = on_exit.enter_context(watch_for_sigterm())
        manager = ckpt.checkpoint_manager(
            workdir,
            max_to_keep=config.keep_checkpoints,
            async_save=config.checkpoint_async,
            compression=config.checkpoint_compression,
        )
        # However the run ends, the save in flight completes first.
        on_exit.callback(ckpt.close_manager, manager)

        # ---- State: fresh, or the newest readable checkpoint in workdir.
        restored = restore_newest_readable(
            manager, abstract_state(parts.init_state, parallel.state_sharding), warn=log
        )
        if restored is None:
            sharding = parallel.state_sharding(jax.eval_shape(parts.init_state))
            state, saved_step, record = jax.jit(parts.init_state, out_shardings=sharding)(), None, None
        else:
            saved_step, state, meta = restored
            record = CheckpointRecord.from_json(meta)
            log(
                f"resumed from step {saved_step} in {manager.directory} "
                f"(epoch {record.epoch + 1}, batch {record.next_batch})"
            )
        step = step_number(state)
        epochs_logged = record.epoch if record else 0
        sums = record.train_sums if record else TrainSums()
        members = parts.members or None
        # [seed, learning rate] per member, as the log, the health checks and checkpoints name them.
        member_pairs = [[m.seed, m.learning_rate] for m in members] if members else None
        if members:
            log(f"a population of {len(members)} members: seeds and learning rates {member_pairs}")
        best_member = record.best_member if record else None
        health = HealthCheck(
            config.halt_on_nonfinite, config.halt_on_loss_growth, record.first_loss if record else None, member_pairs
        )
        device_state = parallel.put_state(state)
        del state
        member_seeds = [seed for seed, _ in member_pairs] if members else None
        data = place_data(dataset, parallel, cache_placement(config, dataset), report=log, member_seeds=member_seeds)
        if members and data.placement != "device":
            log(
                f"data.cache={data.placement}: every member reads the batches in config.seed's order, "
                f"so only the members of seed {config.seed} equal their own runs"
            )
        # Images of every member count: a population's throughput is member-images per second.
        images_per_step = config.batch_size * (len(members) if members else 1)

        # ---- Logs: config.json, metrics.jsonl cut back to the checkpoint, TensorBoard.
        if is_logging_process():
            if saved_step is not None:
                run_identity.record_changes(workdir, saved_step, config_changes)
            rundir.write_config(workdir, config)
            rundir.keep_metrics_through(workdir, epochs_logged, warn=log)
        # From the step after the checkpoint on, TensorBoard forgets what a killed run logged.
        records = EpochRecords(workdir, config.num_epochs, first_step=step + 1)
        on_exit.callback(records.close)
        progress = Progress(steps_per_epoch, config.num_epochs, config.progress_line_seconds)
        # Closed before any exception's message is printed: a bar left on the line would run into it.
        on_exit.callback(progress.close)
        steps_per_call = StepsPerCall(config.host_check_seconds)
        checkpoint_clock = CheckpointClock(config.checkpoint_min_seconds)
        profile = StepProfile(config.profile_steps, os.path.join(workdir, rundir.EVENTS_SUBDIR), log)
        on_exit.callback(profile.stop)
        # The first call compiles; images per second leave it out.
        compiled, timed_seconds, timed_steps = False, 0.0, 0

        # ---- The loop: a call of several steps, then what is due at its last step.
        result: dict[str, Any] = {}
        last_step = config.num_epochs * steps_per_epoch
        while step < last_step or epochs_logged < step // steps_per_epoch:
            stop = False
            if epochs_logged == step // steps_per_epoch:  # else: resumed with the epoch's line to write
                count = steps_per_call.next(cadence.steps_to_next_event(step))
                count = profile.before_call(count) if compiled else count
                started = time.perf_counter()
                device_state, host_metrics = data.run_steps(device_state, step, count, config.batch_size)
                elapsed = time.perf_counter() - started
                if compiled:
                    timed_seconds, timed_steps = timed_seconds + elapsed, timed_steps + count
                compiled = True
                steps_per_call.measured(count, elapsed)
                profile.after_call(count)
                health.check(host_metrics, step + 1, saved_step, str(manager.directory))
                sums = sums.plus(host_metrics)
                step += count
                rate = images_per_second(timed_steps * images_per_step, timed_seconds)
                progress.update(step, count, float(np.mean(sums.means()[0])), rate)
                ckpt.raise_if_save_failed(manager)
                # Every process asks about every step, so several processes agree on the stop.
                stop = any([should_stop(s) for s in range(step - count + 1, step + 1)])
            due = cadence.due(step)
            if due.epoch_end and not stop:  # a stop leaves evaluating to the resumed run
                progress.close()
                test = data.evaluate(device_state, config.batch_size)
                result = epoch_record(
                    step // steps_per_epoch,
                    step,
                    sums,
                    test,
                    images_per_second(timed_steps * images_per_step, timed_seconds),
                    members,
                )
                best_member = result.get("best_member")
                # No epoch's line runs ahead of a checkpoint that failed to write.
                ckpt.raise_if_save_failed(manager, wait=True)
                records.write(result, parts.learning_rate(step - 1))
                epochs_logged, sums, timed_seconds, timed_steps = step // steps_per_epoch, TrainSums(), 0.0, 0
            # The one save: after the epoch's line, so a checkpoint whose record says
            # an epoch is logged has its line written.
            saves = due.every_steps or (due.epoch_end and (step == last_step or checkpoint_clock.epoch_end_saves()))
            if (saves or stop) and saved_step != step:
                record = CheckpointRecord(
                    epoch=epochs_logged,
                    next_batch=step - epochs_logged * steps_per_epoch,
                    train_sums=sums,
                    class_names=list(dataset.class_names),
                    image_size=config.image_size,
                    first_loss=health.first_loss,
                    identity=identity,
                    best_member=best_member,
                    members=member_pairs,
                )
                ckpt.save_checkpoint(manager, parallel.get_state(device_state), record.to_json())
                saved_step = step
                checkpoint_clock.saved()
            if stop:
                raise Preempted(step, str(manager.directory))

        if not result:  # the checkpoint already held a finished run
            test = data.evaluate(device_state, config.batch_size)
            # No step trained here: sums of zero steps, one per member for a population.
            empty = TrainSums([0.0] * len(members), [0.0] * len(members)) if members else TrainSums()
            result = epoch_record(config.num_epochs, saved_step, empty, test, float("nan"), members)
            result = {key: result[key] for key in ("epoch", "step", "test_loss", "test_accuracy", "members", "best_member") if key in result}
    return result
