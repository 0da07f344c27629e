"""Orbax checkpoints of a run: the train state and a small JSON record beside it.

A checkpoint lives in WORKDIR/checkpoints/<step>/ with two items: "state",
the TrainState's arrays (params, opt_state, step, rng, batch_stats), and
"meta", JSON with the data position (epoch and the next batch in it) and what
a reader needs without the config (class names, image size).
"""

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from fmjax.errors import UserError

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
    """Where the checkpoints of the run in `workdir` live."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def checkpoint_manager(
    workdir: str, *, max_to_keep: Optional[int] = None, create: bool = True
) -> ocp.CheckpointManager:
    """An Orbax CheckpointManager over `workdir`'s checkpoints, keeping the last `max_to_keep`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
    # Naming the handlers up front lets a fresh manager read an item's metadata.
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save_checkpoint(manager: ocp.CheckpointManager, state: Any, meta: dict) -> None:
    """Saves `state` (a single-copy TrainState) and `meta` at `state.step`."""
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
    manager, step = _existing_manager(workdir, step)
    saved_params = manager.item_metadata(step)["state"]["params"]
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={"params": saved_params},
                restore_args={
                    "params": jax.tree.map(
                        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved_params
                    )
                },
                partial_restore=True,
            )
        ),
    )
    return step, restored.state["params"]


def read_meta(workdir: str, step: Optional[int] = None) -> tuple[int, dict]:
    """The step and meta dict of `workdir`'s checkpoint at `step` (the latest when None)."""
    manager, step = _existing_manager(workdir, step)
    return step, manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
