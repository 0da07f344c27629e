"""Class probabilities for image files, from a trained run alone.

A run directory holds everything prediction needs: config.json (the model
and the pixel normalisation) and the checkpoint (the params, the class names
and the image size), so no data set is read. The images go through fmjax's
own data path (fmjax.data.pipeline.Dataset) as a one-split data set, so they
are decoded, resized and normalised exactly as the training images were.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np

from fmjax import checkpoint as ckpt
from fmjax.data.image_folder import IMAGE_EXTENSIONS, image_files_split
from fmjax.data.pipeline import Dataset
from fmjax.errors import UserError
from fmjax.models import create_model
from fmjax.trainer import CONFIG_FILE

# One prediction: {"class": name, "probability": float}; one result per image:
# {"path": str, "predictions": [prediction, ...]}, most probable first.
Prediction = dict[str, Any]


def find_image_paths(inputs: Sequence[str]) -> list[str]:
    """The image files that `inputs` name: files as given, folders walked.

    Args:
      inputs: paths of image files or of folders; a folder contributes every
        file under it whose name ends in one of IMAGE_EXTENSIONS (any case),
        in sorted order, hidden files and folders skipped.

    Returns:
      The files, inputs in the order given.

    Raises:
      UserError: an input does not exist, or no image is found at all.
    """
    paths = []
    for path in inputs:
        if os.path.isfile(path):
            paths.append(path)
        elif os.path.isdir(path):
            paths += _images_under(path)
        else:
            raise UserError(f"{path} does not exist; pass image files or folders of images")
    if not paths:
        raise UserError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(inputs)}; "
            "pass image files or folders holding some"
        )
    return paths


def _images_under(folder: str) -> list[str]:
    paths = []
    for directory, subdirectories, file_names in os.walk(folder, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        paths += [
            os.path.join(directory, name)
            for name in sorted(file_names)
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return paths


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
        images = Dataset(
            name="images to classify",
            class_names=self.class_names,
            image_shape=(self.image_size, self.image_size, 3),
            seed=0,
            train_split=split,
            test_split=split,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
        )
        prepare = jax.jit(images.prepare)
        # No larger than the input, so a few images cost a small forward pass.
        for batch in images.test_batches(min(self.batch_size, len(paths))):
            yield jax.device_get(prepare(batch))

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


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config the run in `workdir` trained with, from the config.json train.py wrote."""
    if not os.path.isdir(workdir):
        raise UserError(f"run directory {workdir} does not exist; pass a --workdir that train.py wrote")
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing; train in {workdir} with train.py, which writes it")
    with open(path) as config_file:
        return ml_collections.ConfigDict(json.load(config_file))


def load_predictor(workdir: str, step: Optional[int] = None, batch_size: int = 64) -> Predictor:
    """A Predictor for the run in `workdir`, with the params of its checkpoint at `step`.

    Args:
      workdir: a run directory written by train.py (config.json and checkpoints/).
      step: the checkpoint's step; the latest when None.
      batch_size: images per forward pass, at least 1.

    Raises:
      UserError: the folder, its config.json or the checkpoint is missing, or
        the checkpoint's params do not fit the config's model.
    """
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be at least 1")
    config = read_run_config(workdir)
    step, meta = ckpt.read_meta(workdir, step)
    step, variables = ckpt.restore_variables_at(workdir, step)
    class_names = list(meta["class_names"])
    image_size = int(meta["image_size"])
    model = create_model(config.model, len(class_names))
    expected = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    )["params"]
    ckpt.check_params_match(variables["params"], expected, f"the checkpoint at step {step} in {workdir}")
    normalize = config.data.normalize
    return Predictor(
        variables=jax.device_put(variables),
        logits_fn=jax.jit(model.apply),
        class_names=class_names,
        image_size=image_size,
        pixel_mean=tuple(map(float, config.data.mean)) if normalize else None,
        pixel_std=tuple(map(float, config.data.std)) if normalize else None,
        step=step,
        batch_size=batch_size,
    )
