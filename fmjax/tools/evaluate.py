"""Exact evaluation over a test split, and of a saved checkpoint."""

import os
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from fmjax.core.population import member_slice
from fmjax.core.state import ModelState
from fmjax.data import Dataset, load_dataset
from fmjax.parallel.data_parallel import parallel_from_config
from fmjax.run import files, rundir
from fmjax.run.placement import evaluate
from fmjax.run.trained import load_trained


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


def evaluate_checkpoint(
    workdir: str,
    step: Optional[int] = None,
    config: Optional[ml_collections.ConfigDict] = None,
    figures_dir: Optional[str] = None,
    num_mistakes: int = 16,
) -> dict[str, Any]:
    """Evaluates the model of `workdir`'s checkpoint at `step` (the latest when None).

    Reads only the params (and batch statistics) from the checkpoint, not the
    optimizer state.

    Args:
      workdir: the run's directory.
      step: the checkpoint's step; the latest when None.
      config: the config whose data to evaluate on; the run's own (its
        config.json) when None. Its classes and image size must be the run's.
      figures_dir: where process 0 writes confusion_<step>.png and
        mistakes_<step>.png (the `num_mistakes` misclassified test images the
        model was surest of); None writes no figure.
      num_mistakes: images in mistakes_<step>.png.

    Returns:
      {"step", "accuracy", "loss", "num_examples", "per_class_accuracy" (a
      list, NaN for a class with no test example), "confusion_matrix" (a list
      of lists, rows are true labels), "figures" (the PNGs written)}. For a
      population every member is evaluated: "members" lists each one's
      {"seed", "learning_rate", "accuracy", "loss"}, "best_member" is the
      index of the best accuracy, and the other keys are the best member's.
    """
    config = rundir.read_config(workdir) if config is None else config
    dataset = load_dataset(config)
    parallel = parallel_from_config(config, prepare=dataset.prepare)
    trained = load_trained(workdir, step, config, data_classes=dataset.class_names, member=None)
    step, model, variables = trained.step, trained.model, trained.variables
    state = ModelState(
        params=variables["params"], batch_stats=variables.get("batch_stats", {}), apply_fn=model.apply
    )
    population = trained.members is not None
    result = evaluate(parallel, parallel.put_state(state), dataset, config.batch_size, population)
    members = {}
    if population:
        best = int(np.argmax([member["accuracy"] for member in result]))
        members = {
            "members": [
                {"seed": seed, "learning_rate": rate, "accuracy": member["accuracy"], "loss": member["loss"]}
                for (seed, rate), member in zip(trained.members, result)
            ],
            "best_member": best,
        }
        result, variables = result[best], member_slice(variables, best)
    confusion = result["confusion_matrix"]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(confusion) / confusion.sum(axis=1)
    figures = []
    if figures_dir is not None and jax.process_index() == 0:
        from fmjax.tools import plots

        figures = [os.path.join(figures_dir, name) for name in rundir.eval_figures(step)]
        files.write_file_with(
            figures[0], lambda path: plots.plot_confusion_matrix(confusion, dataset.class_names, path)
        )
        variables = jax.device_put(variables)
        mistakes = most_confident_mistakes(
            lambda images: model.apply(variables, images), dataset, config.batch_size, num_mistakes
        )
        files.write_file_with(
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
        **members,
    }
