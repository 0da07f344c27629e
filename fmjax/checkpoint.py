"""Orbax checkpoints of a run: the train state and a small JSON record beside it.

A checkpoint lives in WORKDIR/checkpoints/<step>/ with two items: "state",
the TrainState's arrays (params, opt_state, step, rng, batch_stats), and
"meta", JSON with the data position (epoch and the next batch in it), the
epoch's train-metric sums so far, and what a reader needs without the config
(class names, image size).

Orbax writes each step into a temporary folder and renames it when complete,
so a run killed while saving leaves no half-written step behind; the next
run's manager deletes the temporary folder. A step damaged afterwards (a
truncated or deleted file) is moved to WORKDIR/damaged_checkpoints/<step> by
`restore_newest_readable`, which goes on to the step before it.
"""

import os
import shutil
import sys
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from fmjax.errors import UserError

CHECKPOINT_SUBDIR = "checkpoints"
DAMAGED_SUBDIR = "damaged_checkpoints"
_CAUSE_CHARS = 120  # of a read error, quoted in a one-line message


def checkpoint_dir(workdir: str) -> str:
    """Where the checkpoints of the run in `workdir` live."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def checkpoint_manager(
    workdir: str,
    *,
    max_to_keep: Optional[int] = None,
    create: bool = True,
    async_save: bool = True,
) -> ocp.CheckpointManager:
    """An Orbax CheckpointManager over `workdir`'s checkpoints, keeping the last `max_to_keep`.

    Args:
      workdir: the run's directory.
      max_to_keep: how many of the newest steps to keep; None keeps all.
      create: whether this manager writes (it then creates the directory and
        deletes the temporary folders of saves that a killed run left).
      async_save: whether `save` returns once the arrays are copied to host
        memory and writes them in a background thread; `wait_until_finished`
        waits for the write.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=create,
        cleanup_tmp_directories=create,
        enable_async_checkpointing=async_save,
    )
    # Naming the handlers up front lets a fresh manager read an item's metadata.
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save_checkpoint(manager: ocp.CheckpointManager, state: Any, meta: dict) -> None:
    """Saves `state` (a single-copy TrainState) and `meta` at `state.step`.

    With an asynchronous manager this returns once the arrays are on the host,
    so the caller may go on updating (or donating) the device state.
    """
    step = int(jax.device_get(state.step))
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)),
    )


def _shapes(tree: Any) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def check_params_match(saved_params: Any, model_params: Any, where: str) -> None:
    """Raises a UserError if two params trees differ in structure or shapes.

    Args:
      saved_params: params (arrays or array metadata) read from `where`.
      model_params: the config's model params (arrays or jax.ShapeDtypeStruct).
      where: names the checkpoint in the message.
    """
    saved, wanted = _shapes(saved_params), _shapes(model_params)
    if saved != wanted:
        name = sorted(set(saved.items()) ^ set(wanted.items()))[0][0]
        raise UserError(
            f"{where} is from another model (params{name}: checkpoint "
            f"{saved.get(name, 'absent')}, config {wanted.get(name, 'absent')}); "
            "use a new --workdir or the config that wrote it"
        )


def restore_checkpoint(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any
) -> tuple[Any, dict]:
    """Restores the state saved at `step` into the shapes and shardings of `abstract_state`.

    Args:
      manager: the run's CheckpointManager.
      step: a step that `manager.all_steps()` lists.
      abstract_state: a TrainState of jax.ShapeDtypeStruct with shardings (see
        fmjax.parallel.abstract_state); the devices it names need not be the
        ones the checkpoint was saved from.

    Returns:
      The restored TrainState and the checkpoint's meta dict.
    """
    check_params_match(
        manager.item_metadata(step)["state"]["params"],
        abstract_state.params,
        f"the checkpoint at step {step} in {manager.directory}",
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


def restore_newest_readable(
    manager: ocp.CheckpointManager, abstract_state: Any, warn: Callable[[str], None]
) -> Optional[tuple[int, Any, dict]]:
    """Restores the newest step that reads back whole, setting damaged newer ones aside.

    A step whose files fail to read (truncated, deleted) is reported through
    `warn` in one line, moved to WORKDIR/damaged_checkpoints/<step> (so the
    run can save that step again), and the step before it is tried.

    Args:
      manager: the run's CheckpointManager (one that writes).
      abstract_state: as for `restore_checkpoint`.
      warn: prints one line (from one process).

    Returns:
      (step, TrainState, meta), or None when `manager` holds no step.

    Raises:
      UserError: every step is damaged, or the checkpoints are of another model.
    """
    damaged = []
    found = None
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            found = (step, *restore_checkpoint(manager, step, abstract_state))
            break
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure to read means damage
            _quiet_reads_outliving_a_failed_restore()
            damaged.append(step)
            warn(
                f"warning: checkpoint step {step} in {manager.directory} is unreadable "
                f"({_one_line(error)}); setting it aside in {_damaged_dir(manager)}"
            )
    if damaged:
        _set_aside(manager, damaged)
    if damaged and found is None:
        raise UserError(
            f"every checkpoint in {manager.directory} is unreadable (steps "
            f"{', '.join(map(str, damaged))}, now in {_damaged_dir(manager)}); "
            "run again to start afresh, or restore the files"
        )
    return found


def _damaged_dir(manager: ocp.CheckpointManager) -> str:
    return os.path.join(os.path.dirname(str(manager.directory)), DAMAGED_SUBDIR)


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Moves damaged steps out of the manager's directory (from process 0), then rereads it."""
    if jax.process_index() == 0:
        for step in steps:
            source = os.path.join(str(manager.directory), str(step))
            target = os.path.join(_damaged_dir(manager), str(step))
            if os.path.exists(target):  # set aside before, saved again, damaged again
                shutil.rmtree(target)
            os.makedirs(_damaged_dir(manager), exist_ok=True)
            shutil.move(source, target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("fmjax: damaged checkpoints set aside")
    manager.reload()


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    if len(text) > _CAUSE_CHARS:
        text = text[: _CAUSE_CHARS - 3] + "..."
    return f"{type(error).__name__}: {text}"


def _quiet_reads_outliving_a_failed_restore() -> None:
    # When one read of a damaged step fails, Orbax's event loop closes while
    # TensorStore still completes the reads that were in flight; each then
    # reports "Event loop is closed" as an unraisable exception, a screenful
    # that adds nothing to the one-line message.
    previous_hook = sys.unraisablehook
    if getattr(previous_hook, "quiets_closed_event_loops", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(
            unraisable.exc_value
        ) == "Event loop is closed":
            return
        previous_hook(unraisable)

    hook.quiets_closed_event_loops = True
    sys.unraisablehook = hook


def _existing_manager(workdir: str, step: Optional[int]) -> tuple[ocp.CheckpointManager, int]:
    manager = checkpoint_manager(workdir, create=False) if os.path.isdir(
        checkpoint_dir(workdir)
    ) else None
    steps = manager.all_steps() if manager else []
    if not steps:
        raise UserError(f"no checkpoint in {workdir}; train there first with train.py --workdir {workdir}")
    if step is None:
        return manager, max(steps)
    if step not in steps:
        raise UserError(
            f"no checkpoint at step {step} in {workdir}; it has steps {', '.join(map(str, sorted(steps)))}"
        )
    return manager, step


def _restore_or_name_damage(manager: ocp.CheckpointManager, step: int, restore: Callable[[], Any]) -> Any:
    """Runs `restore`; a failure to read the step's files becomes a one-line UserError."""
    try:
        return restore()
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to read means damage
        _quiet_reads_outliving_a_failed_restore()
        others = [s for s in sorted(manager.all_steps()) if s != step]
        choice = f"pass --step with one of {', '.join(map(str, others))}" if others else "train again"
        raise UserError(
            f"the checkpoint at step {step} in {manager.directory} is damaged "
            f"({_one_line(error)}); {choice}"
        ) from error


def restore_params(workdir: str, step: Optional[int] = None) -> Any:
    """The trained params of the run in `workdir`, as numpy arrays, for research code.

    Reads only the params (not the optimizer state) and needs no config: the
    tree's structure and shapes come from the checkpoint.

    Args:
      workdir: a run directory written by train.py.
      step: the checkpoint's step; the latest when None.

    Returns:
      The params pytree, e.g. {"conv1": {"kernel", "bias"}, "fc1": ..., "fc2": ...}.
    """
    return restore_params_at(workdir, step)[1]


def restore_params_at(workdir: str, step: Optional[int] = None) -> tuple[int, Any]:
    """Like restore_params, and also the step it read: (step, params)."""
    step, variables = restore_variables_at(workdir, step)
    return step, variables["params"]


def restore_variables_at(workdir: str, step: Optional[int] = None) -> tuple[int, dict]:
    """The model's variables at `step` (the latest when None), without the optimizer state.

    Returns:
      (step, variables): {"params": ...} and, for a model with batch
      statistics, "batch_stats"; numpy arrays, ready for the model's `apply`.
    """
    manager, step = _existing_manager(workdir, step)

    def restore():
        saved = manager.item_metadata(step)["state"]
        item = {name: saved[name] for name in ("params", "batch_stats") if saved.get(name)}
        return manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=jax.tree.map(
                        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item
                    ),
                    partial_restore=True,
                )
            ),
        ).state

    return step, _restore_or_name_damage(manager, step, restore)


def read_meta(workdir: str, step: Optional[int] = None) -> tuple[int, dict]:
    """The step and meta dict of `workdir`'s checkpoint at `step` (the latest when None)."""
    manager, step = _existing_manager(workdir, step)
    return step, _restore_or_name_damage(
        manager,
        step,
        lambda: manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta,
    )
