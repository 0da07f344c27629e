"""Orbax checkpoints of a run: the train state and a small JSON record beside it.

A checkpoint lives in WORKDIR/checkpoints/<step>/ with two items: "state",
the TrainState's arrays (params, opt_state, step, rng, batch_stats), and
"meta", JSON with the data position (epoch and the next batch in it), the
epoch's train-metric sums so far, and what a reader needs without the config
(class names, image size).

Orbax writes each step into a temporary folder and renames it when complete,
so a run killed while saving leaves no half-written step behind; the next
run's manager deletes the temporary folder. A step damaged afterwards is
set aside by fmjax.run.checkpoint_damage.

A write that fails (no space left, no permission) raises CheckpointWriteError
at the next step boundary, naming the cause and the newest complete step.
"""

import os
import threading
import weakref
from typing import Any, Optional

import orbax.checkpoint as ocp

from fmjax.core.state import step_number
from fmjax.errors import UserError, WriteFailure
from fmjax.run import files, rundir
from fmjax.run.checkpoint_shapes import check_state_matches
from fmjax.run.quiet import one_line, quiet_reads_outliving_a_failed_restore


def checkpoint_dir(workdir: str) -> str:
    """Where the checkpoints of the run in `workdir` live."""
    return os.path.join(os.path.abspath(workdir), rundir.CHECKPOINT_SUBDIR)


def checkpoint_manager(
    workdir: str,
    *,
    max_to_keep: Optional[int] = None,
    create: bool = True,
    async_save: bool = True,
    compression: bool = False,
) -> ocp.CheckpointManager:
    """An Orbax CheckpointManager over `workdir`'s checkpoints, keeping the last `max_to_keep`.

    Args:
      workdir: the run's directory.
      max_to_keep: how many of the newest steps to keep; None keeps all.
      create: whether this manager writes (it then creates the directory and
        deletes the temporary folders of saves that a killed run left; a step
        or such a folder that is a symbolic link is a UserError).
      async_save: whether `save` returns once the arrays are copied to host
        memory and writes them in a background thread; `wait_until_finished`
        waits for the write.
      compression: whether saves zstd-compress the arrays. Reads take either
        kind, whatever this says.
    """
    directory = checkpoint_dir(workdir)
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise UserError(f"{directory} is not a folder; move it away, fmjax keeps the run's checkpoints there")
    if create:
        _refuse_linked_steps(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=create,
        cleanup_tmp_directories=create,
        enable_async_checkpointing=async_save,
    )
    # Naming the handlers up front lets a fresh manager read an item's metadata.
    handlers = {
        "state": ocp.PyTreeCheckpointHandler(use_compression=compression),
        "meta": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _refuse_linked_steps(directory: str) -> None:
    """Raises a UserError for a step, or a killed save's folder, in `directory` that is a symbolic link.

    A writing manager deletes those (steps past keep_checkpoints, a killed
    save's folder) with rmtree, which refuses a link: the run would stop at its
    first pruning, on every resume. Other names there are Orbax's to ignore,
    and fmjax's too.
    """
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        path = os.path.join(directory, name)
        if (name.isdigit() or ".orbax-checkpoint-tmp" in name) and os.path.islink(path):
            raise UserError(
                f"{path} is a symbolic link (to {os.readlink(path)}), which Orbax cannot delete when "
                "pruning; move the step back in place of the link, or remove the link"
            )


class CheckpointWriteError(WriteFailure):
    """A checkpoint could not be written; training stopped at once.

    Attributes:
      step: the step whose write failed.
      cause: e.g. "no space left on the device".
      newest_complete: the newest step whose write completed, or None.
    """

    def __init__(
        self, step: Optional[int], cause: str, directory: str, newest_complete: Optional[int], written: bool = False
    ):
        kept = (
            f"the newest complete checkpoint is step {newest_complete}"
            if newest_complete is not None
            else "no checkpoint is complete"
        )
        which = f"checkpoint step {step}" if step is not None else "a checkpoint"
        what = (
            f"{which} in {directory} was written, but removing the checkpoints past keep_checkpoints failed"
            if written
            else f"writing {which} in {directory} failed"
        )
        super().__init__(
            f"{what}: {cause}; training stopped, {kept}; "
            "free space (or fix the permissions) and run the same command to resume"
        )
        self.step = step
        self.cause = cause
        self.newest_complete = newest_complete


def _complete_steps(manager: ocp.CheckpointManager) -> list[int]:
    # Orbax renames a step's folder to the bare number when its write is complete.
    directory = str(manager.directory)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(name) for name in names if name.isdigit())


def _write_error(
    manager: ocp.CheckpointManager, error: BaseException, step: Optional[int], in_background: bool = False
) -> CheckpointWriteError:
    cause = files.describe_write_failure(error) or one_line(error)
    complete = _complete_steps(manager)
    # A background save renames the step's folder once written; what fails after that is the pruning.
    written = in_background and step in complete
    complete = [s for s in complete if s != step or written]
    quiet_reads_outliving_a_failed_restore()
    return CheckpointWriteError(step, cause, str(manager.directory), max(complete, default=None), written)


# The step each manager writes in the background; weakly keyed, as an id() is reused.
_step_in_flight: "weakref.WeakKeyDictionary[ocp.CheckpointManager, int]" = weakref.WeakKeyDictionary()
_in_flight_lock = threading.Lock()


def raise_if_save_failed(manager: ocp.CheckpointManager, wait: bool = False) -> None:
    """Raises CheckpointWriteError if a background write has failed; cheap, call it every step.

    With `wait`, a write in progress is first waited for, so that on return it
    is known to have completed.

    Raises:
      CheckpointWriteError: naming the cause and the newest complete step.
    """
    with _in_flight_lock:
        step = _step_in_flight.get(manager)
    if step is None or (manager.is_saving_in_progress() and not wait):
        return
    with _in_flight_lock:
        _step_in_flight.pop(manager, None)
    try:
        manager.wait_until_finished()  # raises what the write raised
        manager.check_for_errors()
    except Exception as error:  # noqa: BLE001 - any failure of the write stops training
        raise _write_error(manager, error, step, in_background=True) from error
    if step not in _complete_steps(manager):
        raise _write_error(manager, RuntimeError("the write did not complete"), step)


def save_checkpoint(manager: ocp.CheckpointManager, state: Any, meta: dict) -> None:
    """Saves `state` (a single-copy TrainState) and `meta` at `state.step`.

    With an asynchronous manager this returns once the arrays are on the host,
    so the caller may go on updating (or donating) the device state; call
    `raise_if_save_failed` after each step to learn of a failed write.

    Raises:
      CheckpointWriteError: this write (or the one before it) failed.
    """
    step = step_number(state)
    raise_if_save_failed(manager)
    with _in_flight_lock:
        previous = _step_in_flight.pop(manager, None)
    try:
        manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)),
        )
    except Exception as error:  # noqa: BLE001 - a write that fails stops training
        if files.describe_write_failure(error) is None and previous is None:
            raise
        raise _write_error(manager, error, previous if previous is not None else step) from error
    with _in_flight_lock:
        _step_in_flight[manager] = step
    if not manager.is_saving_in_progress():  # a synchronous save has finished
        raise_if_save_failed(manager)


def close_manager(manager: ocp.CheckpointManager) -> None:
    """Waits for the write in flight and closes `manager`; a failed write raises CheckpointWriteError."""
    with _in_flight_lock:
        step = _step_in_flight.pop(manager, None)
    try:
        manager.close()
    except Exception as error:  # noqa: BLE001
        if step is None and files.describe_write_failure(error) is None:
            return  # already reported: the exception that ends the run says why
        raise _write_error(manager, error, step, in_background=True) from error
    if step is not None and step not in _complete_steps(manager):
        raise _write_error(manager, RuntimeError("the write did not complete"), step)


def state_metadata(manager: ocp.CheckpointManager, step: int) -> Any:
    """The array metadata of a step's state; a missing metadata file is damage (ValueError)."""
    saved = manager.item_metadata(step)["state"]
    if saved is None:
        raise ValueError(f"the metadata of step {step}'s state (state/_METADATA) is missing or unreadable")
    return saved


def restore_checkpoint(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any
) -> tuple[Any, dict]:
    """Restores the state saved at `step` into the shapes and shardings of `abstract_state`.

    Args:
      manager: the run's CheckpointManager.
      step: a step that `manager.all_steps()` lists.
      abstract_state: a TrainState of jax.ShapeDtypeStruct with shardings (see
        fmjax.parallel.mesh.abstract_state); the devices it names need not be the
        ones the checkpoint was saved from.

    Returns:
      The restored TrainState and the checkpoint's meta dict.
    """
    check_state_matches(
        state_metadata(manager, step), abstract_state, f"the checkpoint at step {step} in {manager.directory}"
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
            ),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored.state, restored.meta
