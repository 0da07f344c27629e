"""Reading a finished run's checkpoints without training: its params, variables and record.

Each read needs no config: the tree's structure and shapes come from the
checkpoint. A step whose files fail to read is named in a one-line UserError.
"""

import os
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from fmjax.core.population import member_slice
from fmjax.errors import UserError
from fmjax.run.checkpoint import checkpoint_dir, checkpoint_manager, state_metadata
from fmjax.run.quiet import one_line, quiet_reads_outliving_a_failed_restore


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
        quiet_reads_outliving_a_failed_restore()
        others = [s for s in sorted(manager.all_steps()) if s != step]
        choice = f"pass --step with one of {', '.join(map(str, others))}" if others else "train again"
        raise UserError(
            f"the checkpoint at step {step} in {manager.directory} is damaged "
            f"({one_line(error)}); {choice}"
        ) from error


def restore_params(workdir: str, step: Optional[int] = None, member: Optional[int] = None) -> Any:
    """The trained params of the run in `workdir`, as numpy arrays, for research code.

    Reads only the params (not the optimizer state) and needs no config: the
    tree's structure and shapes come from the checkpoint.

    Args:
      workdir: a run directory written by train.py.
      step: the checkpoint's step; the latest when None.
      member: of a population (config.num_seeds, config.sweep), the member
        whose params to return; None returns every member's, each leaf with
        a leading member axis.

    Returns:
      The params pytree, e.g. {"conv1": {"kernel", "bias"}, "fc1": ..., "fc2": ...}.
    """
    return restore_params_at(workdir, step, member)[1]


def restore_params_at(workdir: str, step: Optional[int] = None, member: Optional[int] = None) -> tuple[int, Any]:
    """Like restore_params, and also the step it read: (step, params)."""
    step, variables = restore_variables_at(workdir, step)
    if member is not None:
        variables = member_variables(variables, read_meta(workdir, step)[1], member, f"the checkpoint at step {step} in {workdir}")
    return step, variables["params"]


def member_variables(variables: Any, meta: dict, member: int, where: str) -> Any:
    """Member `member`'s part of a population's variables (those of `meta`'s checkpoint).

    Raises:
      UserError: the checkpoint is not a population's, or has no such member.
    """
    members = meta.get("members")
    if not members:
        raise UserError(f"{where} is an ordinary run's, not a population's; leave out the member")
    if not 0 <= member < len(members):
        raise UserError(f"{where} has members 0 to {len(members) - 1}; member {member} is not one of them")
    return member_slice(variables, member)


def restore_variables_at(workdir: str, step: Optional[int] = None) -> tuple[int, dict]:
    """The model's variables at `step` (the latest when None), without the optimizer state.

    Returns:
      (step, variables): {"params": ...} and, for a model with batch
      statistics, "batch_stats"; numpy arrays, ready for the model's `apply`.
    """
    manager, step = _existing_manager(workdir, step)

    def restore():
        saved = state_metadata(manager, step)
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


def newest_meta(workdir: str) -> Optional[tuple[int, dict]]:
    """(step, meta) of the newest checkpoint in `workdir` whose meta reads back, or None; reads only.

    A step whose meta fails to read is left for fmjax.run.checkpoint_damage to judge.
    """
    if not os.path.lexists(checkpoint_dir(workdir)):
        return None
    manager = checkpoint_manager(workdir, create=False)
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            except Exception:  # noqa: BLE001 - damage; judged when the state is restored
                quiet_reads_outliving_a_failed_restore()
                continue
            if isinstance(meta, dict):
                return step, meta
        return None
    finally:
        manager.close()
