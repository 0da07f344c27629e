"""Class probabilities for image files, from a trained run alone.

A run directory holds everything prediction needs: config.json (the model
and the pixel normalisation) and the checkpoint (the params, the class names
and the image size), so no data set is read. The images go through fmjax's
own data path (fmjax.data.image_files, fmjax.data.preprocess), so they are
decoded, resized and normalised exactly as the training images were.
"""

import dataclasses
import functools
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np

from fmjax.data.batches import padded_batches
from fmjax.data.folder_walk import UNREADABLE, path_kind, walk_image_files
from fmjax.data.image_files import IMAGE_EXTENSIONS, image_files_split
from fmjax.data.preprocess import preprocess_images
from fmjax.errors import UserError
from fmjax.run.trained import load_trained

# One prediction: {"class": name, "probability": float}; one result per image:
# {"path": str, "predictions": [prediction, ...]}, most probable first.
Prediction = dict[str, Any]


def find_image_paths(inputs: Sequence[str], warn: Callable[[str], None] = lambda line: None) -> list[str]:
    """The image files that `inputs` name: files as given, folders walked.

    Args:
      inputs: paths of image files or of folders; a folder contributes every
        regular file under it whose name ends in one of IMAGE_EXTENSIONS (any
        case), in sorted order, hidden files and folders skipped. Links are
        followed, but each real folder and file is visited once: a link
        back to a folder already walked (a loop) is not walked again.
      warn: told, in one line a folder, what the walk left out (links that
        loop, files that are not regular: a FIFO named b.png would block
        reading forever).

    Returns:
      The files, inputs in the order given.

    Raises:
      UserError: an input does not exist or is not a regular file or folder,
        or no image is found at all.
    """
    paths = []
    for path in inputs:
        kind = _kind(path)
        if kind == "file":
            paths.append(path)
        elif kind == "folder":
            paths += _images_under(path, warn)
        elif kind == "missing":
            raise UserError(f"{path} does not exist; pass image files or folders of images")
        else:
            raise UserError(f"{path} is {kind}, not a regular file; pass image files or folders of images")
    if not paths:
        raise UserError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(inputs)}; "
            "pass image files or folders holding some"
        )
    return paths


def _kind(path: str) -> str:
    """"file", "folder", "missing" or what else `path` is, following links (see path_kind)."""
    try:
        return path_kind(path)
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror}); fix its permissions") from None


def _images_under(folder: str, warn: Callable[[str], None]) -> list[str]:
    """Image files under `folder`, each real file once; each real folder walked once."""
    walk = walk_image_files(folder)
    for directory, reason in walk.unlisted:
        warn(f"warning: cannot list {directory} ({reason}); left out")
    for entry in walk.named_like_images:
        if entry.kind == UNREADABLE:
            raise UserError(f"cannot read {entry.path} ({entry.reason}); fix its permissions")
    loops = walk.repeated_folders
    special = [
        f"{entry.path} ({entry.kind})" for entry in walk.named_like_images if entry.kind not in ("file", "missing")
    ]
    if loops:
        warn(
            f"warning: {len(loops)} link(s) under {folder} lead back to a folder already walked, "
            f"not walked again: {', '.join(loops[:3])}{', ...' * (len(loops) > 3)}"
        )
    if special:
        warn(
            f"warning: left out {len(special)} file(s) under {folder} that are not regular files: "
            f"{', '.join(special[:3])}{', ...' * (len(special) > 3)}"
        )
    return walk.image_files


def top_k_predictions(
    probabilities: np.ndarray, class_names: Sequence[str], top_k: int
) -> list[Prediction]:
    """The `top_k` most probable classes, most probable first (ties in label order).

    Args:
      probabilities: float [num_classes], one image's class probabilities.
      class_names: one name per class, in label order.
      top_k: how many classes to list; at most num_classes are.
    """
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [{"class": class_names[i], "probability": float(probabilities[i])} for i in order]


def format_predictions(results: Sequence[dict[str, Any]]) -> str:
    """One line per image: its path, then each class with its probability in percent."""
    return "\n".join(
        f"{result['path']}: "
        + ", ".join(f"{p['class']} {p['probability']:.1%}" for p in result["predictions"])
        for result in results
    )


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A trained model ready to classify image files.

    Attributes:
      variables: the model's params (and batch statistics), on the default device.
      logits_fn: jitted (variables, images [B, H, W, 3]) -> logits [B, num_classes].
      class_names: one name per class, in label order.
      image_size: images are resized to image_size x image_size pixels.
      pixel_mean, pixel_std: per-channel normalisation after scaling to
        [0, 1], or None when the run trained on [0, 1] pixels.
      step: the checkpoint step the params come from.
      batch_size: images per forward pass.
    """

    variables: Any
    logits_fn: Callable[[Any, jax.Array], jax.Array]
    class_names: list[str]
    image_size: int
    pixel_mean: Optional[tuple[float, float, float]]
    pixel_std: Optional[tuple[float, float, float]]
    step: int
    batch_size: int = 64

    def preprocessed_batches(self, paths: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """The images at `paths`, decoded, resized and normalised as in training.

        Yields {"image": float32 [b, H, W, 3], "mask": float32 [b]} in the
        order of `paths`; the last batch is padded, with mask 0 on the padding.
        """
        split = image_files_split(paths, self.image_size)
        preprocess = jax.jit(
            functools.partial(preprocess_images, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std)
        )
        # No larger than the input, so a few images cost a small forward pass.
        for batch in padded_batches(split, min(self.batch_size, len(paths))):
            yield {"image": jax.device_get(preprocess(batch["image"])), "mask": batch["mask"]}

    def probabilities(self, paths: Sequence[str]) -> np.ndarray:
        """float32 [len(paths), num_classes]: each image's class probabilities."""
        rows = []
        for batch in self.preprocessed_batches(paths):
            logits = self.logits_fn(self.variables, batch["image"])
            probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
            rows.append(probabilities[batch["mask"] > 0])
        return np.concatenate(rows)

    def predict(self, paths: Sequence[str], top_k: int = 3) -> list[dict[str, Any]]:
        """The `top_k` classes of each image file in `paths`.

        Args:
          paths: image files (see find_image_paths for folders).
          top_k: classes listed per image, at least 1; at most num_classes are.

        Returns:
          One {"path", "predictions": [{"class", "probability"}, ...]} per
          path, in order, predictions most probable first.
        """
        if top_k < 1:
            raise UserError(f"top_k is {top_k}; ask for at least 1 class per image")
        return [
            {"path": path, "predictions": top_k_predictions(row, self.class_names, top_k)}
            for path, row in zip(paths, self.probabilities(paths))
        ]


def load_predictor(
    workdir: str, step: Optional[int] = None, batch_size: int = 64, member: Optional[int] = None
) -> Predictor:
    """A Predictor for the run in `workdir`, with the params of its checkpoint at `step`.

    Args:
      workdir: a run directory written by train.py (config.json and checkpoints/).
      step: the checkpoint's step; the latest when None.
      batch_size: images per forward pass, at least 1.
      member: of a population, the member to predict with; the best by test
        accuracy (as the run recorded it) when None.

    Raises:
      UserError: the folder, its config.json or the checkpoint is missing, or
        the checkpoint's params do not fit the config's model.
    """
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be at least 1")
    trained = load_trained(workdir, step, member="best" if member is None else member)
    return Predictor(
        variables=jax.device_put(trained.variables),
        logits_fn=jax.jit(trained.model.apply),
        class_names=trained.class_names,
        image_size=trained.image_size,
        pixel_mean=trained.pixel_mean,
        pixel_std=trained.pixel_std,
        step=trained.step,
        batch_size=batch_size,
    )
