"""train_and_evaluate(config, workdir): the training loop, read top to bottom.

config -> data -> model and optimizer -> state (fresh or resumed) -> parallel
steps -> epochs of train steps with checkpoints -> evaluation -> logs.

Nothing is lost when a run stops. A checkpoint holds the state (params,
optimizer state, step, rng, batch statistics), the data position (epoch and
next batch; an epoch's order is a function of the seed and the epoch) and the
epoch's train-metric sums so far. A step's inputs are functions of these, so
a run killed at any point and started again with the same command ends with
the same params, bit for bit, as a run never stopped; metrics.jsonl is cut
back to the epochs the checkpoint holds and goes on from there. A SIGTERM
saves at the next step boundary and raises Preempted; a NaN or Inf raises
NonFiniteError before anything non-finite is saved.
"""

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from fmjax.core.models import create_model
from fmjax.core.optim import create_learning_rate_schedule, create_optimizer
from fmjax.core.state import create_train_state
from fmjax.data import Dataset, cache_placement, load_dataset
from fmjax.data.split import in_memory, split_pixels
from fmjax.parallel.modes import DataParallel, abstract_state, parallel_from_config
from fmjax.run import checkpoint as ckpt
from fmjax.run import identity as run_identity
from fmjax.run import rundir
from fmjax.run.config_checks import check_config
from fmjax.run.divergence import LossGrowthError, first_grown_step, loss_limit
from fmjax.run.lock import hold_workdir
from fmjax.run.preemption import Preempted, watch_for_sigterm
from fmjax.run.runtime import use_compilation_cache, use_freed_memory_again
from fmjax.run.tensorboard import EVENTS_SUBDIR, EpochSummaries
from fmjax.tools.evaluate import evaluate, test_metrics

# Steps dispatched ahead of the one the host waits for. Enough to keep devices
# busy; unbounded queues of collectives can deadlock XLA's CPU runtime when
# several fake devices share few cores.
MAX_STEPS_IN_FLIGHT = 2


def is_logging_process() -> bool:
    """Only process 0 prints and writes logs; every process joins checkpoints."""
    return jax.process_index() == 0


def log(message: str) -> None:
    """Prints one line from process 0, without breaking a progress bar."""
    if is_logging_process():
        tqdm.tqdm.write(message)


def initial_state_fn(config: ml_collections.ConfigDict, dataset: Dataset):
    """A function of no arguments returning the fresh TrainState that `config` describes.

    It is pure, so `jax.eval_shape` of it gives the state's shapes for free.
    """
    model = create_model(config.model, dataset.num_classes)
    optimizer = create_optimizer(config, dataset.steps_per_epoch(config.batch_size))
    sample = jax.ShapeDtypeStruct((1, *dataset.image_shape), np.float32)
    return lambda: create_train_state(jax.random.key(config.seed), model, optimizer, sample)


@dataclasses.dataclass(frozen=True)
class TrainSums:
    """Sums of the per-step train metrics over the current epoch's steps so far.

    Checkpoints keep them, so an epoch's train loss and accuracy come out the
    same whether or not the run stopped inside it.
    """

    loss: float = 0.0
    accuracy: float = 0.0
    steps: int = 0


class NonFiniteError(Exception):
    """A step's loss, gradients or updated state held a NaN or an Inf; nothing of it was saved."""

    def __init__(self, step: int, newest_checkpoint: Optional[int], directory: str):
        saved = (
            f"the newest checkpoint, step {newest_checkpoint} in {directory}, is finite"
            if newest_checkpoint is not None
            else "no checkpoint was saved"
        )
        super().__init__(
            f"the loss, gradients or updated params became NaN or Inf at step {step}; "
            f"{saved}; lower config.learning_rate (or set config.halt_on_nonfinite=False)"
        )
        self.step = step


def first_nonfinite_step(step_metrics: list[dict], first_step: int) -> Optional[int]:
    """The number of the first step whose "finite" flag is False, or None.

    Args:
      step_metrics: host copies of the metrics of steps first_step,
        first_step + 1, ...
      first_step: the step number (updates applied) after step_metrics[0].
    """
    for offset, metrics in enumerate(step_metrics):
        if not metrics.get("finite", True):  # absent: the run does not check
            return first_step + offset
    return None


def add_step_metrics(sums: TrainSums, step_metrics: list[dict]) -> TrainSums:
    """`sums` with host copies of consecutive steps' metrics added.

    One step at a time, in float64, so the same steps give the same sums
    however they were split between calls.
    """
    loss, accuracy = sums.loss, sums.accuracy
    for metrics in step_metrics:
        loss += float(metrics["loss"])
        accuracy += float(metrics["accuracy"])
    return TrainSums(loss, accuracy, sums.steps + len(step_metrics))


def checkpoint_meta(
    dataset: Dataset, config, epoch: int, next_batch: int, sums: TrainSums, first_loss: Optional[float] = None
) -> dict:
    """What a checkpoint records besides the arrays: the data position, the epoch's sums, class
    names, the run's first loss and the config and data that define the run (fmjax.run.identity)."""
    return {
        "epoch": epoch,
        "next_batch": next_batch,
        "train_sums": dataclasses.asdict(sums),
        "class_names": list(dataset.class_names),
        "image_size": config.image_size,
        "first_loss": first_loss,
        run_identity.RECORD_KEY: run_identity.run_record(config, dataset.class_names, dataset.num_train),
    }


def keep_metrics_through(workdir: str, last_epoch: int) -> None:
    """Drops the metrics.jsonl lines of epochs after `last_epoch` (see fmjax.run.rundir)."""
    if is_logging_process():
        rundir.keep_metrics_through(workdir, last_epoch, warn=log)


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """Where training and evaluation read their pixels from (see fmjax.data.cache_placement).

    Attributes:
      placement: "device" (both splits on every device, batches gathered
        there inside the compiled loop), "host" (both splits in host memory)
        or "none" (loaded from the source batch by batch).
      train, test: the device copies of the splits, with "device".
    """

    placement: str
    train: Any = None
    test: Any = None


def place_data(
    dataset: Dataset, parallel: DataParallel, placement: str
) -> tuple[Dataset, TrainingData]:
    """Loads both splits once into host memory or onto the devices, as `placement` says.

    Returns:
      The data set (with "host", its splits now read from memory; with
      "device", unchanged: batches come from the devices' copies) and where
      the pixels are.
    """
    if placement == "none":
        return dataset, TrainingData("none")
    started = time.perf_counter()
    if placement == "device":
        data = TrainingData(
            "device",
            parallel.put_data(split_pixels(dataset.train_split)),
            parallel.put_data(split_pixels(dataset.test_split)),
        )
    else:
        dataset = dataclasses.replace(
            dataset, train_split=in_memory(dataset.train_split), test_split=in_memory(dataset.test_split)
        )
        data = TrainingData("host")
    log(
        f"{dataset.num_train + dataset.num_test} images loaded into {placement} memory "
        f"({dataset.pixel_bytes() / 2**20:.1f} MiB) in {time.perf_counter() - started:.1f} s"
    )
    return dataset, data


def evaluate_placed(
    parallel: DataParallel, device_state: Any, dataset: Dataset, data: TrainingData, batch_size: int
) -> dict[str, Any]:
    """Test loss, accuracy and confusion matrix, from the devices' copy of the test split if there is one."""
    if data.placement != "device":
        return evaluate(parallel, device_state, dataset, batch_size)
    indices, masks = dataset.test_indices(
        batch_size, process_index=jax.process_index(), process_count=jax.process_count()
    )
    sums = parallel.eval_loop(
        device_state, data.test, parallel.put_indices(indices), parallel.put_indices(masks)
    )
    return test_metrics(jax.device_get(sums))


class StepsPerCall:
    """How many steps the next compiled call runs: about `seconds` of work, the same on every process.

    The host checks for SIGTERM, due checkpoints and the epoch's end between
    calls, so the count bounds how long a stop waits. It grows from one step
    (the compilation) as the measured step time allows.
    """

    def __init__(self, seconds: float):
        self._seconds = seconds
        self._count = 1

    def next(self, remaining: int) -> int:
        return max(1, min(self._count, remaining))

    def measured(self, steps: int, seconds: float) -> None:
        per_step = seconds / max(steps, 1)
        count = int(self._seconds / per_step) if per_step > 0 else self._count * 2
        count = max(1, min(count, 2 * max(self._count, steps)))
        if jax.process_count() > 1:
            count = int(multihost_utils.broadcast_one_to_all(np.int32(count)))
        self._count = count


class StepProfile:
    """Traces `num_steps` steps after the first compilation with jax.profiler, into TensorBoard's folder.

    The trace shows where a step's time goes on the user's own hardware:
    `tensorboard --logdir WORKDIR`, Profile tab (with the tensorboard-plugin-profile package).
    """

    def __init__(self, num_steps: int, directory: str, report: Callable[[str], None]):
        self._left = num_steps
        self._directory = directory
        self._report = report
        self._tracing = False

    def before_call(self, count: int) -> int:
        """The step count the next call may run: no more than the steps still to trace."""
        if self._left <= 0:
            return count
        if not self._tracing:
            jax.profiler.start_trace(self._directory)
            self._tracing = True
        return min(count, self._left)

    def after_call(self, count: int) -> None:
        if not self._tracing:
            return
        self._left -= count
        if self._left <= 0:
            self.stop()
            self._report(f"profile of the traced steps written to {self._directory}")

    def stop(self) -> None:
        if self._tracing:
            self._tracing = False
            jax.profiler.stop_trace()


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
    # ---- Data and devices.
    use_freed_memory_again()
    use_compilation_cache(config.compilation_cache_dir)
    dataset = load_dataset(config, report=log)
    parallel = parallel_from_config(config, prepare=dataset.prepare)
    steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
    placement = cache_placement(config, dataset)
    # A resume continues the same run: refused, touching nothing, if it is not.
    config_changes = run_identity.check_resume(
        ckpt.newest_meta(workdir),
        run_identity.run_record(config, dataset.class_names, dataset.num_train),
        workdir,
        allow_config_change,
        warn=log,
    )

    with contextlib.ExitStack() as on_exit:
        on_exit.enter_context(hold_workdir(workdir))
        should_stop = on_exit.enter_context(watch_for_sigterm())
        manager = ckpt.checkpoint_manager(
            workdir, max_to_keep=config.keep_checkpoints, async_save=config.checkpoint_async
        )
        # However the run ends, the save in flight completes first.
        on_exit.callback(ckpt.close_manager, manager)

        # ---- State: fresh, or the newest readable checkpoint in workdir.
        state_fn = initial_state_fn(config, dataset)
        restored = ckpt.restore_newest_readable(
            manager, abstract_state(state_fn, parallel.state_sharding), warn=log
        )
        if restored is None:
            state = jax.jit(state_fn, out_shardings=parallel.state_sharding(jax.eval_shape(state_fn)))()
            saved_step, start_epoch, start_batch, sums = None, 0, 0, TrainSums()
            first_loss = None
        else:
            saved_step, state, meta = restored
            start_epoch, start_batch = meta["epoch"], meta["next_batch"]
            sums = TrainSums(**meta["train_sums"])
            first_loss = meta.get("first_loss")
            log(
                f"resumed from step {saved_step} in {manager.directory} "
                f"(epoch {start_epoch + 1}, batch {start_batch})"
            )
        device_state = parallel.put_state(state)
        del state
        dataset, data = place_data(dataset, parallel, placement)

        if is_logging_process():
            if saved_step is not None:
                run_identity.record_changes(workdir, saved_step, config_changes)
            rundir.write_text(workdir, rundir.CONFIG_FILE, config.to_json_best_effort(indent=2))
            summaries = EpochSummaries(workdir)
            on_exit.callback(summaries.close)
        # The rate the last step of an epoch used, for the logs.
        learning_rate = create_learning_rate_schedule(config, steps_per_epoch)
        keep_metrics_through(workdir, start_epoch)
        steps_per_call = StepsPerCall(config.host_check_seconds)
        interactive = sys.stderr.isatty()
        last_progress_line = time.monotonic()
        compiled = False  # the first call compiles; images per second leave it out
        profile = StepProfile(config.profile_steps, os.path.join(workdir, EVENTS_SUBDIR), log)
        on_exit.callback(profile.stop)

        def images_per_second(steps: int, seconds: float) -> float:
            return steps * config.batch_size / seconds if seconds > 0 else float("nan")

        def save(epoch: int, next_batch: int, sums: TrainSums) -> None:
            meta = checkpoint_meta(dataset, config, epoch, next_batch, sums, first_loss)
            ckpt.save_checkpoint(manager, parallel.get_state(device_state), meta)

        def add_checked(sums: TrainSums, host_metrics: list[dict], last_step: int) -> TrainSums:
            # Before every save: the steps since the last one must be finite,
            # and their losses not grown by orders of magnitude.
            nonlocal first_loss
            bad_step = first_nonfinite_step(host_metrics, last_step - len(host_metrics) + 1)
            if config.halt_on_nonfinite and bad_step is not None:
                raise NonFiniteError(bad_step, saved_step, str(manager.directory))
            losses = [float(metrics["loss"]) for metrics in host_metrics]
            if first_loss is None and losses:
                first_loss = losses[0]
            if first_loss is not None:
                grown = first_grown_step(
                    losses, last_step - len(host_metrics) + 1, loss_limit(first_loss, config.halt_on_loss_growth)
                )
                if grown is not None:
                    raise LossGrowthError(
                        *grown, first_loss, config.halt_on_loss_growth, saved_step, str(manager.directory)
                    )
            return add_step_metrics(sums, host_metrics)

        # ---- The loop: calls of several steps, host events between them.
        record: dict[str, Any] = {}
        on_epoch_exit = on_exit.enter_context(contextlib.ExitStack())
        for epoch in range(start_epoch, config.num_epochs):
            batch_index = start_batch if epoch == start_epoch else 0
            process = {"process_index": jax.process_index(), "process_count": jax.process_count()}
            if data.placement == "device":
                epoch_indices = parallel.put_indices(
                    dataset.train_indices(epoch, config.batch_size, **process)
                )
            else:
                host_batches = iter(
                    dataset.train_batches(epoch, config.batch_size, start_batch=batch_index, **process)
                )
            # Closed before any exception's message is printed: a bar left
            # on the line would run into it.
            progress = on_epoch_exit.enter_context(
                tqdm.tqdm(
                    total=steps_per_epoch,
                    initial=batch_index,
                    desc=f"epoch {epoch + 1}/{config.num_epochs}",
                    # In a file or a CI log, carriage returns are noise.
                    disable=not (is_logging_process() and interactive),
                    leave=False,
                )
            )
            stop, timed_seconds, timed_steps = False, 0.0, 0
            while batch_index < steps_per_epoch and not stop:
                step = epoch * steps_per_epoch + batch_index
                every = config.checkpoint_every_steps
                until_due = every - step % every if every > 0 else steps_per_epoch
                count = steps_per_call.next(min(until_due, steps_per_epoch - batch_index))
                if compiled:
                    count = profile.before_call(count)
                started = time.perf_counter()
                if data.placement == "device":
                    device_state, metrics = parallel.train_loop(
                        device_state, data.train, epoch_indices, epoch, batch_index, count
                    )
                    metrics = jax.device_get(metrics)
                    host_metrics = [
                        {k: v[i] for k, v in metrics.items()}
                        for i in range(batch_index, batch_index + count)
                    ]
                else:
                    host_metrics = []
                    for _ in range(count):
                        device_state, metrics = parallel.train_step(
                            device_state, parallel.put_batch(next(host_batches)), epoch
                        )
                        host_metrics.append(metrics)
                        if len(host_metrics) > MAX_STEPS_IN_FLIGHT:
                            jax.block_until_ready(host_metrics[-MAX_STEPS_IN_FLIGHT - 1])
                    host_metrics = jax.device_get(host_metrics)
                elapsed = time.perf_counter() - started
                if compiled:
                    timed_seconds, timed_steps = timed_seconds + elapsed, timed_steps + count
                compiled = True
                steps_per_call.measured(count, elapsed)
                profile.after_call(count)
                sums = add_checked(sums, host_metrics, step + count)
                batch_index += count
                step += count
                progress.update(count)
                if not interactive and time.monotonic() - last_progress_line >= config.progress_line_seconds:
                    last_progress_line = time.monotonic()
                    log(
                        f"epoch {epoch + 1}/{config.num_epochs}  batch {batch_index}/{steps_per_epoch}  "
                        f"train loss so far {sums.loss / max(sums.steps, 1):.4f}  "
                        f"{images_per_second(timed_steps, timed_seconds):.0f} images/s"
                    )
                ckpt.raise_if_save_failed(manager)
                # Every process asks about every step, so several processes agree on the stop.
                stop = any([should_stop(s) for s in range(step - count + 1, step + 1)])
                due = every > 0 and step % every == 0
                if (due or stop) and batch_index < steps_per_epoch:  # the epoch's end saves anyway
                    save(epoch, batch_index, sums)
                    saved_step = step
                    if stop:
                        raise Preempted(step, str(manager.directory))
            on_epoch_exit.close()

            # ---- The epoch's end: evaluate, log, save.
            step = (epoch + 1) * steps_per_epoch
            if stop:  # at the epoch's last step: evaluating is left to the resumed run
                save(epoch, steps_per_epoch, sums)
                raise Preempted(step, str(manager.directory))
            test = evaluate_placed(parallel, device_state, dataset, data, config.batch_size)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": sums.loss / sums.steps if sums.steps else float("nan"),
                "train_accuracy": sums.accuracy / sums.steps if sums.steps else float("nan"),
                "test_loss": test["loss"],
                "test_accuracy": test["accuracy"],
                "images_per_second": images_per_second(timed_steps, timed_seconds),
            }
            log(
                f"epoch {record['epoch']}/{config.num_epochs}  step {record['step']}  "
                f"train loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.2%}  "
                f"test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.2%}  "
                f"{record['images_per_second']:.0f} images/s"
            )
            if is_logging_process():
                rundir.append_metrics(workdir, record)
                summaries.write(
                    step,
                    {
                        "train/loss": record["train_loss"],
                        "train/accuracy": record["train_accuracy"],
                        "test/loss": record["test_loss"],
                        "test/accuracy": record["test_accuracy"],
                        "learning_rate": float(learning_rate(step - 1)),
                        "images_per_second": record["images_per_second"],
                    },
                )
            # Saved after the log line, so a checkpoint at an epoch's start
            # means that epoch's line is written. A run resumed from a stop at
            # the last step holds this step already.
            sums = TrainSums()
            if saved_step != step:
                save(epoch + 1, 0, sums)
                saved_step = step

        if not record:  # the checkpoint already held a finished run
            test = evaluate_placed(parallel, device_state, dataset, data, config.batch_size)
            record = {"epoch": config.num_epochs, "step": saved_step, "test_loss": test["loss"], "test_accuracy": test["accuracy"]}
    return record
