"""A trained run, loaded from its directory alone: what evaluation, prediction and export need."""

import dataclasses
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import ml_collections

from fmjax.core.build import build
from fmjax.errors import UserError
from fmjax.run import rundir
from fmjax.run.checkpoint_reads import member_variables, read_meta, restore_variables_at
from fmjax.run.checkpoint_shapes import check_params_match


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A run's model with the params of one checkpoint.

    Attributes:
      workdir: the run's directory.
      step: the checkpoint's step.
      config: the run's config (its config.json, or the one the caller gave).
      model: the Flax module; `model.apply(variables, images)` gives logits.
      variables: {"params": ...} and, with BatchNorm, "batch_stats"; numpy arrays.
      class_names: what the model's outputs mean, in order.
      image_size: images are resized to image_size x image_size pixels.
      pixel_mean, pixel_std: the per-channel normalisation after scaling to
        [0, 1], or None when the run trained on [0, 1] pixels.
      member: of a population, the member whose params `variables` holds;
        None for an ordinary run, or when `variables` holds every member's
        (a leading member axis).
      members: a population's [seed, learning rate] per member; None for an ordinary run.
      best_member: the population's member of the best test accuracy when the
        checkpoint was saved (None before the first epoch's end).
    """

    workdir: str
    step: int
    config: ml_collections.ConfigDict
    model: nn.Module
    variables: Any
    class_names: list[str]
    image_size: int
    pixel_mean: Optional[tuple[float, float, float]]
    pixel_std: Optional[tuple[float, float, float]]
    member: Optional[int] = None
    members: Optional[list] = None
    best_member: Optional[int] = None


def check_same_classes(meta: dict, class_names: Sequence[str], image_size: int, where: str) -> None:
    """Raises a UserError unless `class_names` and `image_size` are those the checkpoint trained on.

    A model's outputs mean its training classes, in order: evaluating it on a
    data set of other classes (even as many) would report a meaningless accuracy.
    """
    saved = list(meta.get("class_names") or [])
    if saved and saved != list(class_names):
        differ = next(
            (f"class {i}: {a!r} in the checkpoint, {b!r} in the data" for i, (a, b) in enumerate(zip(saved, class_names)) if a != b),
            f"{len(saved)} classes in the checkpoint, {len(class_names)} in the data",
        )
        raise UserError(
            f"{where} was trained on other classes than config.data names ({differ}); "
            "evaluate with the run's data (its config.json)"
        )
    saved_size = meta.get("image_size")
    if saved_size is not None and saved_size != image_size:
        raise UserError(
            f"{where} was trained on {saved_size}x{saved_size} images, config.image_size is "
            f"{image_size}; evaluate with --config.image_size={saved_size}"
        )


def load_trained(
    workdir: str,
    step: Optional[int] = None,
    config: Optional[ml_collections.ConfigDict] = None,
    data_classes: Optional[Sequence[str]] = None,
    member: Union[int, str, None] = "best",
) -> TrainedRun:
    """The run in `workdir` with the params of its checkpoint at `step` (the latest when None).

    Reads the params (and batch statistics), not the optimizer state.

    Args:
      workdir: a run directory that train.py wrote.
      step: the checkpoint's step; the latest when None.
      config: the config to build the model from; the run's config.json when None.
      data_classes: the classes of the data the caller will use; checked, with
        config.image_size, against the checkpoint's before its arrays are read.
      member: of a population: a member's index, "best" (the member of the
        best test accuracy, as the run recorded it) or None (every member,
        each leaf with a leading member axis). An ordinary run takes "best" or
        None; an index is refused.

    Raises:
      UserError: the folder, its config.json or the checkpoint is missing or
        damaged, or the checkpoint is not of the config's model or data.
    """
    config = rundir.read_config(workdir) if config is None else config
    step, meta = read_meta(workdir, step)
    where = f"the checkpoint at step {step} in {workdir}"
    class_names = list(meta["class_names"])
    check_same_classes(meta, class_names if data_classes is None else data_classes, config.image_size, where)
    step, variables = restore_variables_at(workdir, step)
    members, best = meta.get("members"), meta.get("best_member")
    if not members and isinstance(member, int):
        raise UserError(f"{where} is an ordinary run's, not a population's; leave out the member")
    if not members:
        member = None
    elif member == "best":
        member = best if best is not None else 0
    if member is not None:
        variables = member_variables(variables, meta, member, where)
    image_size = int(meta["image_size"])
    parts = build(config, len(class_names), (image_size, image_size, 3))
    expected = parts.abstract_variables()["params"]
    if members and member is None:  # every member's: a leading member axis
        expected = jax.tree.map(lambda x: jax.ShapeDtypeStruct((len(members), *x.shape), x.dtype), expected)
    check_params_match(variables["params"], expected, where)
    normalize = config.data.normalize
    return TrainedRun(
        workdir=workdir,
        step=step,
        config=config,
        model=parts.model,
        variables=variables,
        class_names=class_names,
        image_size=image_size,
        pixel_mean=tuple(map(float, config.data.mean)) if normalize else None,
        pixel_std=tuple(map(float, config.data.std)) if normalize else None,
        member=member,
        members=members,
        best_member=best,
    )

