"""Figures of a run: learning curves, a confusion matrix, misclassified images.

Each `*_figure` function is pure: numpy or plain records in, a matplotlib
Figure out, nothing drawn on screen or written. Each `plot_*` function writes
one PNG. Figures are built on the Agg canvas directly rather than through
pyplot, so no display is needed and no global figure list grows.
"""

import json
import math
import os
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from fmjax.errors import UserError
from fmjax.run.rundir import METRICS_FILE

# One entry per epoch, as the trainer writes metrics.jsonl; a population's
# also holds "members", one dict per member with its seed, learning_rate and CURVE_KEYS.
Records = list[dict[str, Any]]
CURVE_KEYS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
BAND_ALPHA = 0.18  # opacity of a population's min-to-max band
DPI = 120  # dots per inch of the written PNGs


def read_metrics(run_dir: str) -> Records:
    """The per-epoch records of the run in `run_dir`, from its metrics.jsonl.

    Args:
      run_dir: a run directory written by train.py.

    Returns:
      One dict per epoch, in file order, each with "epoch" and CURVE_KEYS.

    Raises:
      UserError: the folder or its metrics.jsonl is missing, or the file is
        empty or holds a line that is not a complete record.
    """
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory {run_dir} does not exist; pass a --workdir that train.py wrote")
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing; train in {run_dir} first (train.py writes it every epoch)")
    records = []
    with open(path) as metrics_file:
        for line_number, line in enumerate(metrics_file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not {"epoch", *CURVE_KEYS} <= record.keys():
                raise UserError(
                    f"{path} line {line_number} is not an epoch record with epoch and "
                    f"{', '.join(CURVE_KEYS)}; fix or delete that line"
                )
            members = record.get("members", [])
            if not isinstance(members, list) or not all(
                isinstance(m, dict) and {"learning_rate", *CURVE_KEYS} <= m.keys() for m in members
            ):
                raise UserError(
                    f"{path} line {line_number} has members without learning_rate and "
                    f"{', '.join(CURVE_KEYS)}; fix or delete that line"
                )
            records.append(record)
    if not records:
        raise UserError(f"{path} holds no epochs yet; let train.py finish an epoch first")
    return records


def run_labels(run_dirs: Sequence[str]) -> list[str]:
    """Each run's folder name, or its path as given when two runs share a folder name."""
    names = [os.path.basename(os.path.normpath(run_dir)) for run_dir in run_dirs]
    return names if len(set(names)) == len(names) else [os.path.normpath(d) for d in run_dirs]


def run_curves(label: str, records: Records) -> list[tuple[str, dict[str, np.ndarray]]]:
    """What one run draws: (legend label, CURVE_KEYS -> values [epochs, seeds]) per line.

    An ordinary run gives one line of one seed; a population one line per
    learning rate, rates and seeds in the members' order.
    """
    members = records[0].get("members")
    if not members:
        return [(label, {key: np.array([[r[key]] for r in records], np.float64) for key in CURVE_KEYS})]
    lines = []
    for rate in dict.fromkeys(member["learning_rate"] for member in members):
        values = {
            key: np.array([[m[key] for m in r["members"] if m["learning_rate"] == rate] for r in records], np.float64)
            for key in CURVE_KEYS
        }
        lines.append((f"{label} lr {rate:g} ({values['test_loss'].shape[1]} seeds)", values))
    return lines


def learning_curves_figure(runs: dict[str, Records]) -> Figure:
    """Loss and accuracy against epoch, train solid and test dashed, one colour per run.

    A population (records with "members") is drawn as one colour per learning
    rate: its line is the mean over that rate's seeds and a shaded band runs
    from their minimum to their maximum, so every seed's curve lies inside it.

    Args:
      runs: label -> that run's per-epoch records (see read_metrics).

    Returns:
      A figure with a loss axes and an accuracy axes and, below them, one
      legend whose entries read "<label> train" and "<label> test", or for a
      population "<label> lr <rate> (<n> seeds) train" and "... test".
    """
    figure = Figure(figsize=(11, 4.4), dpi=DPI, layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    curves = [
        ([record["epoch"] for record in records], label, values)
        for run_label, records in runs.items()
        for label, values in run_curves(run_label, records)
    ]
    for index, (epochs, label, values) in enumerate(curves):
        colour = f"C{index % 10}"
        for split, style in (("train", "-"), ("test", "--")):
            for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
                seeds = values[f"{split}_{metric}"]
                axes.plot(
                    epochs, seeds.mean(axis=1), linestyle=style, color=colour, marker="o", markersize=3,
                    label=f"{label} {split}",
                )
                if seeds.shape[1] > 1:
                    axes.fill_between(
                        epochs, seeds.min(axis=1), seeds.max(axis=1), color=colour, alpha=BAND_ALPHA, linewidth=0
                    )
    loss_axes.set(title="Loss", xlabel="epoch", ylabel="loss")
    accuracy_axes.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    accuracy_axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    for axes in (loss_axes, accuracy_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    # One legend under both plots keeps the curves uncovered however many runs there are.
    handles, labels = loss_axes.get_legend_handles_labels()
    banded = any(values["test_loss"].shape[1] > 1 for _, _, values in curves)
    figure.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=min(len(handles), 4),
        fontsize="small",
        title="line: mean over seeds; band: min to max over seeds" if banded else None,
        title_fontsize="small",
    )
    return figure


def confusion_matrix_figure(
    confusion: np.ndarray, class_names: Sequence[str], max_annotated_classes: int = 30
) -> Figure:
    """The confusion matrix as a heat map: rows true classes, columns predicted ones.

    Colours are each row's counts divided by the row's total (the share of a
    true class given each prediction), so rare and common classes read alike;
    the cells show the raw counts.

    Args:
      confusion: int [num_classes, num_classes], confusion[t, p] counts the
        examples of class t predicted as p.
      class_names: one name per class, in label order.
      max_annotated_classes: above this many classes the counts are left out,
        since they would no longer fit in their cells.

    Returns:
      The figure, with a colour bar of the row share.
    """
    confusion = np.asarray(confusion)
    num_classes = len(class_names)
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion has shape {confusion.shape}; expected ({num_classes}, {num_classes})")
    row_totals = confusion.sum(axis=1, keepdims=True)
    row_share = np.divide(confusion, row_totals, out=np.zeros(confusion.shape), where=row_totals > 0)
    side = min(4.0 + 0.45 * num_classes, 24.0)
    figure = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    colour_bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colour_bar.set_label("share of the true class")
    colour_bar.formatter = PercentFormatter(xmax=1.0)
    ticks = np.arange(num_classes)
    # Many class names side by side would overlap; slanted, they fit.
    slanted = num_classes > 10
    axes.set_xticks(
        ticks, labels=class_names, rotation=45 if slanted else 0, ha="right" if slanted else "center"
    )
    axes.set_yticks(ticks, labels=class_names)
    axes.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix")
    if num_classes <= max_annotated_classes:
        for true_class in range(num_classes):
            for predicted_class in range(num_classes):
                share = row_share[true_class, predicted_class]
                axes.text(
                    predicted_class,
                    true_class,
                    str(int(confusion[true_class, predicted_class])),
                    ha="center",
                    va="center",
                    fontsize="small" if num_classes <= 15 else "x-small",
                    # White on the dark cells, black on the light ones.
                    color="white" if share > 0.5 else "black",
                )
    return figure


def misclassified_figure(
    images: np.ndarray,
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    max_images: int = 16,
) -> Figure:
    """A grid of images, each titled "true X / predicted Y (p=0.93)".

    Args:
      images: [N, H, W, 3] or [N, H, W], floats; each image is stretched to
        its own [min, max] for display, so normalised pixels show too.
      true_labels: int [N].
      predicted_labels: int [N].
      probabilities: float [N], the probability the model gave its prediction.
      class_names: one name per class, in label order.
      max_images: at most this many images, the first ones, are shown.

    Returns:
      The figure, a near-square grid of min(N, max_images) images.
    """
    count = min(len(images), max_images)
    if count == 0:
        raise ValueError("no images to show")
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(2.4 * columns, 2.5 * rows), dpi=DPI, layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).reshape(-1)
    for index, axes in enumerate(grid):
        axes.set_axis_off()
        if index >= count:
            continue
        image = np.asarray(images[index], np.float64)
        low, high = image.min(), image.max()
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
        axes.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        axes.set_title(
            f"true {class_names[true_labels[index]]} / predicted "
            f"{class_names[predicted_labels[index]]}\n(p={float(probabilities[index]):.2f})",
            fontsize="small",
        )
    return figure


def save_figure(figure: Figure, out_path: str, dpi: int = DPI) -> None:
    """Writes `figure` as a PNG of `dpi` dots per inch to `out_path`, creating its folder."""
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(out_path, format="png", dpi=dpi)


def plot_learning_curves(run_dirs: Sequence[str], out_path: str, dpi: int = DPI) -> None:
    """Writes the learning curves of the runs in `run_dirs`, overlaid, to the PNG `out_path`.

    Args:
      run_dirs: run directories written by train.py, each labelled by its folder name.
      out_path: the PNG to write.
      dpi: dots per inch of the PNG.
    """
    records = [read_metrics(run_dir) for run_dir in run_dirs]
    figure = learning_curves_figure(dict(zip(run_labels(run_dirs), records)))
    save_figure(figure, out_path, dpi)


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], out_path: str) -> None:
    """Writes the confusion matrix (see confusion_matrix_figure) to the PNG `out_path`."""
    save_figure(confusion_matrix_figure(confusion, class_names), out_path)


def plot_misclassified(
    images: np.ndarray,
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    out_path: str,
    max_images: int = 16,
) -> None:
    """Writes a grid of misclassified images (see misclassified_figure) to the PNG `out_path`."""
    figure = misclassified_figure(
        images, true_labels, predicted_labels, probabilities, class_names, max_images
    )
    save_figure(figure, out_path)
