"""Whether a checkpoint's trees are those of the config's model and optimizer, compared by shape before any read."""

from typing import Any

import jax

from fmjax.errors import UserError


def _path_names(path) -> tuple:
    """A tree path as plain names, so a namedtuple's field and a dict's key compare equal."""
    names = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                names.append(str(getattr(entry, attribute)))
                break
        else:
            names.append(str(entry))
    return tuple(names)


def _shapes(tree: Any) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {"".join(f"[{n!r}]" for n in _path_names(path)): tuple(leaf.shape) for path, leaf in leaves}


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


def check_state_matches(saved_state: Any, abstract_state: Any, where: str) -> None:
    """Raises a UserError if a checkpoint's state is not of the config's model and optimizer.

    Compared before any array is read, so a checkpoint of another optimizer
    (adam and sgd, or gradient clipping added) is a mismatch, never damage.
    """
    check_params_match(saved_state["params"], abstract_state.params, where)
    for part, what, keys in (
        ("opt_state", "an optimizer state", "config.optimizer, config.grad_clip_norm or config.optimizer.weight_decay"),
        ("batch_stats", "batch statistics", "config.model"),
    ):
        saved, wanted = _shapes(saved_state.get(part) or {}), _shapes(getattr(abstract_state, part))
        if saved != wanted:
            raise UserError(
                f"{where} holds {what} of another structure ({len(saved)} arrays, the config's "
                f"has {len(wanted)}): {keys} differ from the run's; resume with the run's values, "
                "or pass another --workdir (fmjax.restore_params reads its params to start from)"
            )
