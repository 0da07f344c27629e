"""A resume's newest readable checkpoint, and the damaged steps set aside on the way.

A step damaged after its write (a truncated or deleted file) is moved to
WORKDIR/damaged_checkpoints/<step>, and the step before it is tried. Damage
is proven by trying to read: a checkpoint of another model or optimizer is
refused (UserError) before any read, and never set aside.
"""

import os
import shutil
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from fmjax.errors import UserError
from fmjax.run import files, rundir
from fmjax.run.checkpoint import restore_checkpoint
from fmjax.run.quiet import one_line, quiet_reads_outliving_a_failed_restore


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
    steps = sorted(manager.all_steps(), reverse=True)
    if steps:
        # Before the first read: TensorStore's threads may report a failed
        # read before the except clause below runs.
        quiet_reads_outliving_a_failed_restore()
    for step in steps:
        try:
            found = (step, *restore_checkpoint(manager, step, abstract_state))
            break
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure to read means damage
            quiet_reads_outliving_a_failed_restore()
            _refuse_unusable_damaged_dir(manager, step)
            damaged.append(step)
            warn(
                f"warning: checkpoint step {step} in {manager.directory} is unreadable "
                f"({one_line(error)}); setting it aside in {_damaged_dir(manager)}"
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
    return os.path.join(os.path.dirname(str(manager.directory)), rundir.DAMAGED_SUBDIR)


def _refuse_unusable_damaged_dir(manager: ocp.CheckpointManager, step: int) -> None:
    # A link to a folder (on the disk the checkpoints were linked to, say) is used.
    folder = _damaged_dir(manager)
    kind = files.not_a_folder(folder)
    if kind:  # every process sees it, and stops
        raise UserError(
            f"{folder} is {kind}, not a folder, so the unreadable checkpoint step {step} in "
            f"{manager.directory} cannot be set aside there; move {folder} away and run the same command"
        )


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Moves damaged steps out of the manager's directory (from process 0), then rereads it."""
    folder = _damaged_dir(manager)
    if jax.process_index() == 0:
        for step in steps:
            source = os.path.join(str(manager.directory), str(step))
            target = os.path.join(folder, str(step))
            copy = 1
            while os.path.lexists(target):  # set aside before, saved again, damaged again: keep both
                target = os.path.join(folder, f"{step}.{copy}")
                copy += 1
            os.makedirs(folder, exist_ok=True)
            shutil.move(source, target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("fmjax: damaged checkpoints set aside")
    manager.reload()
