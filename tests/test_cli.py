"""The command lines end to end: training, evaluation, and one-line user errors (exit 2)."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import (
    DEFAULT_CONFIG,
    LAST_STEP,
    STEPS_PER_EPOCH,
    evaluate_tiny,
    one_error_line,
    saved_steps,
    train,
    train_py,
    train_tiny,
)
from PIL import Image

from fmjax.run import rundir


@pytest.fixture(scope="module")
def trained_run(tiny_run, tmp_path_factory):
    """A copy of the session's tiny run, which these tests evaluate and resume."""
    workdir = tmp_path_factory.mktemp("cli") / "run"
    shutil.copytree(tiny_run, workdir)
    return str(workdir)


def test_training_writes_config_metrics_and_checkpoints(trained_run):
    records = rundir.read_metrics(trained_run)
    assert [r["epoch"] for r in records] == [1, 2]
    # 1347 training digits in batches of 64: 21 steps an epoch, remainder dropped.
    assert [r["step"] for r in records] == [STEPS_PER_EPOCH, LAST_STEP]
    assert set(records[0]) == {
        "epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "images_per_second",
    }
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[1]["test_accuracy"] > 0.8
    with open(os.path.join(trained_run, "config.json")) as f:
        config = json.load(f)
    assert config["image_size"] == 8 and config["model"]["hidden"] == 32
    assert saved_steps(trained_run) == [STEPS_PER_EPOCH, LAST_STEP]


def test_evaluate_reproduces_the_training_accuracy(trained_run, capsys):
    assert evaluate_tiny(trained_run) == 0
    with open(os.path.join(trained_run, "eval_42.json")) as f:
        result = json.load(f)
    last = rundir.read_metrics(trained_run)[-1]
    assert result["step"] == 42
    assert result["num_examples"] == 450
    assert result["accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-9)
    assert result["loss"] == pytest.approx(last["test_loss"], rel=1e-5)
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 450
    assert np.trace(confusion) / 450 == pytest.approx(result["accuracy"])
    np.testing.assert_allclose(result["per_class_accuracy"], np.diag(confusion) / confusion.sum(axis=1))
    assert f"test accuracy: {result['accuracy']:.2%} over 450 examples" in capsys.readouterr().out
    for name in ("confusion_42.png", "mistakes_42.png"):
        with open(os.path.join(trained_run, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert result["figures"] == [os.path.join(trained_run, n) for n in ("confusion_42.png", "mistakes_42.png")]


def test_most_confident_mistakes_are_wrong_and_sorted(trained_run):
    import jax

    import fmjax
    from fmjax.config import base_config
    from fmjax.core.models import SeedCNN
    from fmjax.data import load_dataset
    from fmjax.tools.evaluate import most_confident_mistakes

    config = base_config()
    config.image_size = 8
    dataset = load_dataset(config)
    params = fmjax.restore_params(trained_run)
    model = SeedCNN(10, hidden=32)
    mistakes = most_confident_mistakes(
        lambda images: model.apply({"params": params}, images), dataset, 64, count=5
    )
    logits = np.concatenate(
        [model.apply({"params": params}, b["image"])[b["mask"] > 0] for b in dataset.test_batches(64)]
    )
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in dataset.test_batches(64)])
    wrong = logits.argmax(axis=1) != labels
    confidence = np.asarray(jax.nn.softmax(logits)).max(axis=1)
    expected = np.sort(confidence[wrong])[::-1][:5]
    assert len(mistakes["probabilities"]) == min(5, int(wrong.sum()))
    np.testing.assert_allclose(mistakes["probabilities"], expected, rtol=1e-5)
    assert np.all(mistakes["true_labels"] != mistakes["predicted_labels"])
    assert mistakes["images"].shape == (len(expected), 8, 8, 3)


def test_evaluate_an_earlier_step(trained_run):
    assert evaluate_tiny(trained_run, "--step", "21") == 0
    with open(os.path.join(trained_run, "eval_21.json")) as f:
        assert json.load(f)["step"] == 21


def test_a_finished_run_resumes_without_training_again(trained_run, capsys):
    assert train_tiny(trained_run) == 0
    assert "resumed from step 42" in capsys.readouterr().out
    assert len(rundir.read_metrics(trained_run)) == 2


def test_a_checkpoint_of_another_model_is_refused(trained_run, capsys):
    assert train_tiny(trained_run, "--config.model.hidden=64") == 2
    line = one_error_line(capsys)
    assert "holds another run (checkpoint step 42): config.model.hidden 32 -> 64;" in line
    # Even on purpose, params of other shapes cannot carry over.
    assert train_tiny(trained_run, "--config.model.hidden=64", "--allow_config_change") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is from another model" in line and "(32,)" in line and "(64,)" in line


def test_a_missing_config_file(capsys):
    assert train("--config", "configs/nope.py") == 2
    assert "config file configs/nope.py does not exist" in one_error_line(capsys)


def test_an_unknown_config_key(capsys):
    assert train("--config", DEFAULT_CONFIG, "--config.num_epoch=3") == 2
    assert "the config has no key 'num_epoch'" in one_error_line(capsys)


def test_a_batch_size_that_does_not_divide_by_the_devices(tmp_path, capsys):
    assert train_tiny(tmp_path, "--config.batch_size=12") == 2
    assert "config.batch_size=12 does not divide by the 8 devices" in one_error_line(capsys)
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "0"))


def test_a_missing_data_root(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    argv = ["--config", DEFAULT_CONFIG, "--workdir", str(tmp_path / "w"),
            "--config.data.source=image_folder", f"--config.data.root={missing}"]
    assert train(*argv) == 2
    assert str(missing) in one_error_line(capsys)


def write_folder(root, splits):
    for split, classes in splits.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((10, 10, 3), 30 * i, np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize(
    "splits, expected",
    [
        ({"train": {"a": 2}}, "test is missing"),
        ({"train": {"a": 2}, "test": {"a": 0}}, "holds no images"),
        ({"train": {"a": 2}, "test": {"b": 1}}, "has no counterpart in"),
    ],
)
def test_image_folder_mistakes(tmp_path, capsys, splits, expected):
    write_folder(tmp_path / "data", splits)
    argv = ["--config", DEFAULT_CONFIG, "--workdir", str(tmp_path / "w"),
            "--config.data.source=image_folder", f"--config.data.root={tmp_path / 'data'}"]
    assert train(*argv) == 2
    assert expected in one_error_line(capsys)


def test_an_unreadable_image_is_named_by_its_path(tmp_path, capsys):
    write_folder(tmp_path / "data", {"train": {"a": 8, "b": 8}, "test": {"a": 8}})
    bad = tmp_path / "data" / "train" / "b" / "3.png"
    bad.write_bytes(b"this is not a png")
    assert train_tiny(
        tmp_path / "w", "--config.data.source=image_folder", f"--config.data.root={tmp_path / 'data'}",
        "--config.batch_size=8",
    ) == 2
    assert str(bad) in one_error_line(capsys)


def test_the_exit_status_and_message_of_a_real_process(tmp_path):
    result = subprocess.run(
        train_py("--config", DEFAULT_CONFIG, "--config.bogus=1"),
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the config has no key 'bogus'; see fmjax/config.py for every key"
    )
    assert "Traceback" not in result.stderr
