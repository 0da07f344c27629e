"""The figures: learning curves of several runs, a confusion matrix, misclassified images."""

import json
import os

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from fmjax import cli
from fmjax.tools import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DIGITS = [str(d) for d in range(10)]


def write_run(run_dir, num_epochs, loss_scale):
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for epoch in range(1, num_epochs + 1):
            record = {
                "epoch": epoch,
                "step": 21 * epoch,
                "train_loss": loss_scale / epoch,
                "test_loss": loss_scale / epoch + 0.1,
                "train_accuracy": 1 - 0.5 / epoch,
                "test_accuracy": 1 - 0.6 / epoch,
                "images_per_second": 1000.0,
            }
            f.write(json.dumps(record) + "\n")
    return str(run_dir)


def assert_png(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE


def test_learning_curves_overlay_runs_with_a_legend_entry_per_run_and_split(tmp_path):
    runs = [write_run(tmp_path / "small", 3, 2.0), write_run(tmp_path / "large", 5, 1.0)]
    figure = plots.learning_curves_figure(
        dict(zip(plots.run_labels(runs), map(plots.read_metrics, runs)))
    )
    loss_axes, accuracy_axes = figure.axes
    # Two runs x (train, test) on each axes, each as long as its run.
    assert [len(line.get_xdata()) for line in loss_axes.lines] == [3, 3, 5, 5]
    np.testing.assert_allclose(loss_axes.lines[2].get_ydata(), [1.0, 0.5, 1 / 3, 0.25, 0.2])
    np.testing.assert_allclose(accuracy_axes.lines[3].get_ydata()[0], 0.4)
    legend_texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend_texts == ["small train", "small test", "large train", "large test"]

    out_path = tmp_path / "curves" / "both.png"
    plots.plot_learning_curves(runs, str(out_path))
    assert_png(out_path)


def write_population(run_dir, num_epochs, seeds, rates):
    """A population's metrics.jsonl whose member values differ by seed and rate; returns the members' values."""
    os.makedirs(run_dir)
    members = [(seed, rate) for rate in rates for seed in seeds]
    values = {key: np.zeros((num_epochs, len(members))) for key in plots.CURVE_KEYS}
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for epoch in range(1, num_epochs + 1):
            rows = []
            for k, (seed, rate) in enumerate(members):
                loss = 2.0 / epoch + 0.1 * seed - rate
                row = {"train_loss": loss, "test_loss": loss + 0.05 * seed, "train_accuracy": 0.5 + 0.1 * epoch - 0.02 * seed,
                       "test_accuracy": 0.4 + 0.1 * epoch + rate - 0.03 * seed}
                for key in plots.CURVE_KEYS:
                    values[key][epoch - 1, k] = row[key]
                rows.append({"seed": seed, "learning_rate": rate, **row})
            means = {key: float(np.mean(values[key][epoch - 1])) for key in plots.CURVE_KEYS}
            f.write(json.dumps({"epoch": epoch, "step": 10 * epoch, **means, "images_per_second": 1.0, "members": rows,
                                "best_member": 0}) + "\n")
    return str(run_dir), values


def test_a_population_draws_a_mean_line_and_a_min_to_max_band_per_rate(tmp_path):
    run, values = write_population(tmp_path / "pop", 4, seeds=[0, 1, 2], rates=[0.001, 0.1])
    figure = plots.learning_curves_figure({"pop": plots.read_metrics(run)})
    loss_axes, accuracy_axes = figure.axes
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        # Lines and bands in the order rate 0.001 train, test, rate 0.1 train, test.
        drawn = [(rate, split) for rate in range(2) for split in ("train", "test")]
        assert len(axes.lines) == len(axes.collections) == 4
        for line, band, (rate, split) in zip(axes.lines, axes.collections, drawn):
            seeds = values[f"{split}_{metric}"][:, 3 * rate : 3 * rate + 3]
            np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
            np.testing.assert_allclose(line.get_ydata(), seeds.mean(axis=1))
            vertices = band.get_paths()[0].vertices
            for epoch in range(1, 5):
                at_epoch = vertices[vertices[:, 0] == epoch, 1]
                np.testing.assert_allclose([at_epoch.min(), at_epoch.max()], [seeds[epoch - 1].min(), seeds[epoch - 1].max()])
            assert to_rgb(band.get_facecolor()[0]) == to_rgb(line.get_color()) == to_rgb(f"C{rate}")
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "pop lr 0.001 (3 seeds) train", "pop lr 0.001 (3 seeds) test", "pop lr 0.1 (3 seeds) train", "pop lr 0.1 (3 seeds) test",
    ]
    assert legend.get_title().get_text() == "line: mean over seeds; band: min to max over seeds"


def test_a_population_overlays_an_ordinary_run_which_draws_as_before(tmp_path):
    population, values = write_population(tmp_path / "pop", 3, seeds=[0, 1], rates=[0.01])
    single = write_run(tmp_path / "single", 3, 1.0)
    out_path = tmp_path / "both.png"
    plots.plot_learning_curves([population, single], str(out_path))
    assert_png(out_path)
    figure = plots.learning_curves_figure({"pop": plots.read_metrics(population), "single": plots.read_metrics(single)})
    loss_axes = figure.axes[0]
    # The population's train and test bands; the ordinary run draws lines only, its own values.
    assert len(loss_axes.collections) == 2 and len(loss_axes.lines) == 4
    np.testing.assert_allclose(loss_axes.lines[0].get_ydata(), values["train_loss"].mean(axis=1))
    np.testing.assert_allclose(loss_axes.lines[2].get_ydata(), [1.0, 0.5, 1 / 3])
    assert [t.get_text() for t in figure.legends[0].get_texts()][1:3] == ["pop lr 0.01 (2 seeds) test", "single train"]


def test_an_ordinary_run_has_no_band_and_no_legend_title(tmp_path):
    figure = plots.learning_curves_figure({"run": plots.read_metrics(write_run(tmp_path / "run", 2, 1.0))})
    assert all(not axes.collections for axes in figure.axes)
    assert figure.legends[0].get_title().get_text() == ""


def test_runs_sharing_a_folder_name_are_labelled_by_path():
    assert plots.run_labels(["a/default", "b/default/"]) == ["a/default", "b/default"]
    assert plots.run_labels(["runs/x", "runs/y"]) == ["x", "y"]


def test_confusion_matrix_annotates_counts_and_colours_row_shares(tmp_path):
    confusion = np.array([[8, 2, 0], [0, 5, 5], [0, 0, 0]])
    figure = plots.confusion_matrix_figure(confusion, ["cat", "dog", "eel"])
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.texts] == [str(c) for c in confusion.reshape(-1)]
    np.testing.assert_allclose(
        axes.images[0].get_array(), [[0.8, 0.2, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]]
    )
    assert [t.get_text() for t in axes.get_yticklabels()] == ["cat", "dog", "eel"]
    assert axes.get_ylabel() == "true class" and axes.get_xlabel() == "predicted class"

    plots.plot_confusion_matrix(confusion, ["cat", "dog", "eel"], str(tmp_path / "confusion.png"))
    assert_png(tmp_path / "confusion.png")


def test_confusion_matrix_leaves_out_counts_of_many_classes():
    names = [f"class {i}" for i in range(40)]
    figure = plots.confusion_matrix_figure(np.eye(40, dtype=int), names)
    assert len(figure.axes[0].texts) == 0


def test_misclassified_grid_titles_each_image_and_stops_at_max_images(tmp_path):
    images = np.random.default_rng(0).uniform(size=(20, 8, 8, 3))
    true_labels = np.arange(20) % 10
    predicted_labels = (true_labels + 1) % 10
    probabilities = np.linspace(0.5, 0.99, 20)
    figure = plots.misclassified_figure(
        images, true_labels, predicted_labels, probabilities, DIGITS, max_images=6
    )
    shown = [axes for axes in figure.axes if axes.images]
    assert len(shown) == 6
    assert shown[0].get_title() == "true 0 / predicted 1\n(p=0.50)"
    assert shown[5].get_title().startswith("true 5 / predicted 6")

    out_path = tmp_path / "misclassified.png"
    plots.plot_misclassified(images, true_labels, predicted_labels, probabilities, DIGITS, str(out_path))
    assert_png(out_path)


def test_plot_metrics_script_writes_into_the_first_run_by_default(tmp_path, capsys):
    runs = [write_run(tmp_path / "a", 2, 1.0), write_run(tmp_path / "b", 2, 2.0)]
    assert cli.run(cli.plot_metrics_main, ["plot_metrics.py", *runs]) == 0
    assert_png(os.path.join(runs[0], "learning_curves.png"))
    assert capsys.readouterr().out == f"learning curves of 2 run(s) written to {os.path.join(runs[0], 'learning_curves.png')}\n"


@pytest.mark.parametrize("make_bad_run", ["missing_dir", "missing_metrics", "bad_line", "bad_member"])
def test_plot_metrics_script_bad_run_is_one_line_and_exit_2(tmp_path, capsys, make_bad_run):
    bad = tmp_path / "bad"
    if make_bad_run != "missing_dir":
        bad.mkdir()
    if make_bad_run == "bad_line":
        (bad / "metrics.jsonl").write_text('{"epoch": 1}\n')
    if make_bad_run == "bad_member":
        record = {"epoch": 1, **dict.fromkeys(plots.CURVE_KEYS, 0.5), "members": [{"seed": 0, "test_loss": 0.5}]}
        (bad / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    assert cli.run(cli.plot_metrics_main, ["plot_metrics.py", str(bad)]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]
