"""Exact evaluation over a test split, and of a saved checkpoint."""

import os
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
import optax

from fmjax.core.models import create_model
from fmjax.core.state import TrainState
from fmjax.data import Dataset, load_dataset
from fmjax.errors import UserError
from fmjax.parallel.data_parallel import parallel_from_config
from fmjax.parallel.interface import DataParallel
from fmjax.run import checkpoint as ckpt
from fmjax.run import rundir
from fmjax.run.config_checks import check_config


def evaluate(
    parallel: DataParallel, device_state: Any, dataset: Dataset, batch_size: int
) -> dict[str, Any]:
    """Loss, accuracy and confusion matrix over every test example exactly once.

    Returns:
      {"loss", "accuracy", "num_examples", "confusion_matrix" (numpy
      [num_classes, num_classes], rows are true labels)}.
    """
    totals = None
    batches = dataset.test_batches(
        batch_size, process_index=jax.process_index(), process_count=jax.process_count()
    )
    for batch in batches:
        sums = jax.device_get(parallel.eval_step(device_state, parallel.put_batch(batch)))
        sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
    return test_metrics(totals)


def test_metrics(totals: dict[str, Any]) -> dict[str, Any]:
    """evaluate's result from the eval sums (fmjax.core.steps.eval_step) over the whole test split."""
    totals = {k: np.asarray(v, np.float64) for k, v in totals.items()}
    count = totals["count"]
    return {
        "loss": float(totals["loss_sum"] / count),
        "accuracy": float(totals["correct"] / count),
        "num_examples": int(count),
        "confusion_matrix": totals["confusion"].astype(np.int64),
    }


def most_confident_mistakes(
    logits_fn: Callable[[Any], Any], dataset: Dataset, batch_size: int, count: int
) -> dict[str, np.ndarray]:
    """The `count` misclassified test images the model was surest of, surest first.

    Args:
      logits_fn: images [B, H, W, 3] -> logits [B, num_classes], on one device.
      dataset: whose whole test split this process reads.
      batch_size: test images per call.
      count: how many to keep.

    Returns:
      {"images" [n, H, W, 3], "true_labels" [n], "predicted_labels" [n],
      "probabilities" [n] (the softmax of the predicted class)}, n <= count.
    """
    kept = {"images": [], "true_labels": [], "predicted_labels": [], "probabilities": []}
    prepare = jax.jit(dataset.prepare)
    for batch in dataset.test_batches(batch_size):
        batch = {**batch, "image": np.asarray(prepare(batch)["image"])}
        probabilities = np.asarray(jax.nn.softmax(logits_fn(batch["image"]).astype(np.float32)))
        predicted = probabilities.argmax(axis=1)
        wrong = (predicted != batch["label"]) & (batch["mask"] > 0)
        kept["images"].append(batch["image"][wrong])
        kept["true_labels"].append(batch["label"][wrong])
        kept["predicted_labels"].append(predicted[wrong])
        kept["probabilities"].append(probabilities.max(axis=1)[wrong])
        merged = {k: np.concatenate(v) for k, v in kept.items()}
        surest = np.argsort(-merged["probabilities"], kind="stable")[:count]
        kept = {k: [v[surest]] for k, v in merged.items()}
    return {k: v[0] for k, v in kept.items()}


def check_same_classes(meta: dict, class_names, image_size: int, where: str) -> None:
    """Raises a UserError unless the data's classes and image size are those the checkpoint trained on.

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


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    step: Optional[int] = None,
    figures_dir: Optional[str] = None,
    num_mistakes: int = 16,
) -> dict[str, Any]:
    """Evaluates the model of `workdir`'s checkpoint at `step` (the latest when None).

    Reads only the params (and batch statistics) from the checkpoint, not the
    optimizer state.

    Args:
      config: the run's config.
      workdir: the run's directory.
      step: the checkpoint's step; the latest when None.
      figures_dir: where process 0 writes confusion_<step>.png and
        mistakes_<step>.png (the `num_mistakes` misclassified test images the
        model was surest of); None writes no figure.
      num_mistakes: images in mistakes_<step>.png.

    Returns:
      {"step", "accuracy", "loss", "num_examples", "per_class_accuracy" (a
      list, NaN for a class with no test example), "confusion_matrix" (a list
      of lists, rows are true labels), "figures" (the PNGs written)}.
    """
    check_config(config)
    dataset = load_dataset(config)
    parallel = parallel_from_config(config, prepare=dataset.prepare)
    step, meta = ckpt.read_meta(workdir, step)
    check_same_classes(meta, dataset.class_names, config.image_size, f"the checkpoint at step {step} in {workdir}")
    step, variables = ckpt.restore_variables_at(workdir, step)
    model = create_model(config.model, dataset.num_classes)
    expected = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *dataset.image_shape), np.float32)
    )["params"]
    ckpt.check_params_match(variables["params"], expected, f"the checkpoint at step {step} in {workdir}")
    state = TrainState(
        step=np.int32(step),
        params=variables["params"],
        opt_state=(),
        rng=jax.random.key(0),
        batch_stats=variables.get("batch_stats", {}),
        apply_fn=model.apply,
        tx=optax.identity(),
    )
    result = evaluate(parallel, parallel.put_state(state), dataset, config.batch_size)
    confusion = result["confusion_matrix"]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(confusion) / confusion.sum(axis=1)
    figures = []
    if figures_dir is not None and jax.process_index() == 0:
        from fmjax.tools import plots

        figures = [
            os.path.join(figures_dir, f"confusion_{step}.png"),
            os.path.join(figures_dir, f"mistakes_{step}.png"),
        ]
        rundir.write_file_with(
            figures[0], lambda path: plots.plot_confusion_matrix(confusion, dataset.class_names, path)
        )
        variables = jax.device_put(variables)
        mistakes = most_confident_mistakes(
            lambda images: model.apply(variables, images), dataset, config.batch_size, num_mistakes
        )
        rundir.write_file_with(
            figures[1],
            lambda path: plots.plot_misclassified(
                mistakes["images"], mistakes["true_labels"], mistakes["predicted_labels"],
                mistakes["probabilities"], dataset.class_names, path, max_images=num_mistakes,
            ),
        )
    return {
        "step": step,
        "accuracy": result["accuracy"],
        "loss": result["loss"],
        "num_examples": result["num_examples"],
        "per_class_accuracy": [float(a) for a in per_class],
        "confusion_matrix": confusion.tolist(),
        "figures": figures,
    }
