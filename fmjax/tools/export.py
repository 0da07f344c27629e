"""A trained run as a model other programs load: a TensorFlow SavedModel and a serialized jax.export.

Both take a batch of any size of images at the run's size, as uint8 pixels
(what a decoder gives) or float32 in [0, 1], and return each class's
probability; the preprocessing inside is the training step's (scaling,
normalisation). Images of another size are refused by the signature: the
training pipeline resizes with PIL before the step, which a graph cannot do
exactly, so callers resize as fmjax.data.resize.resize_image does.

- saved_model/: for TF Serving or `tf.saved_model.load`, through jax2tf.
  Signatures "serving_default" (uint8) and "serving_float" (float32), each
  returning {"probabilities": [batch, classes], "class_names": [classes]}.
- model.jax_export: `jax.export.deserialize(open(path, "rb").read()).call(images)`
  with float32 images in [0, 1] gives the probabilities; jax alone loads it.
- class_names.json: the class names, in label order.
"""

import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from fmjax.errors import UserError
from fmjax.tools.predict import load_predictor

SAVED_MODEL_DIR = "saved_model"
JAX_EXPORT_FILE = "model.jax_export"
CLASS_NAMES_FILE = "class_names.json"


def probabilities_fn(workdir: str, step: Optional[int] = None) -> tuple[Callable[[Any], Any], list[str], int]:
    """(images float32 [B, S, S, 3] in [0, 1] -> probabilities [B, C], class names, S) for a run.

    The function is pure and closes over the params, so jax.export and jax2tf
    bake them in as constants.
    """
    predictor = load_predictor(workdir, step)
    variables = jax.device_get(predictor.variables)
    mean = None if predictor.pixel_mean is None else jnp.asarray(predictor.pixel_mean, jnp.float32)
    std = None if predictor.pixel_std is None else jnp.asarray(predictor.pixel_std, jnp.float32)

    def probabilities(images):
        images = images.astype(jnp.float32)
        if mean is not None:
            images = (images - mean) / std
        return jax.nn.softmax(predictor.logits_fn(variables, images).astype(jnp.float32), axis=-1)

    return probabilities, predictor.class_names, predictor.image_size


def export_run(workdir: str, out: str, step: Optional[int] = None) -> list[str]:
    """Writes the SavedModel, the jax.export artifact and the class names of `workdir`'s run to `out`.

    Returns:
      The paths written.

    Raises:
      UserError: the run cannot be read (see load_predictor), or `out` exists
        and is not an empty folder.
    """
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"{out} exists and is not an empty folder; pass a new --out")
    probabilities, class_names, size = probabilities_fn(workdir, step)
    os.makedirs(out, exist_ok=True)
    written = [
        _write_jax_export(probabilities, size, os.path.join(out, JAX_EXPORT_FILE)),
        _write_saved_model(probabilities, class_names, size, os.path.join(out, SAVED_MODEL_DIR)),
    ]
    names_path = os.path.join(out, CLASS_NAMES_FILE)
    with open(names_path, "w") as f:
        json.dump(class_names, f)
    return [*written, names_path]


def _write_jax_export(probabilities: Callable, size: int, path: str) -> str:
    (batch,) = jax.export.symbolic_shape("batch")
    exported = jax.export.export(jax.jit(probabilities))(
        jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    )
    with open(path, "wb") as f:
        f.write(exported.serialize())
    return path


def _write_saved_model(probabilities: Callable, class_names: list[str], size: int, path: str) -> str:
    from fmjax.data.tensorflow_import import import_tensorflow

    tf = import_tensorflow()
    from jax.experimental import jax2tf  # noqa: PLC0415 - needs TensorFlow

    converted = jax2tf.convert(probabilities, polymorphic_shapes=["(b, ...)"], with_gradient=False)
    module = tf.Module()
    module.names = tf.constant(class_names)

    def outputs(images):
        return {"probabilities": converted(images), "class_names": module.names}

    # autograph=False: the functions are plain graphs; autograph would only
    # try (and fail, noisily) to rewrite jax2tf's internals.
    module.serving_float = tf.function(
        outputs,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")],
        autograph=False,
    )
    module.serving_default = tf.function(
        lambda images: outputs(tf.cast(images, tf.float32) / 255.0),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")],
        autograph=False,
    )
    tf.saved_model.save(
        module,
        path,
        signatures={"serving_default": module.serving_default, "serving_float": module.serving_float},
    )
    return path

