"""The command lines end to end: training, evaluation, and one-line user errors (exit 2)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fmjax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.py")
# Small enough to train in seconds: 8x8 digits, a narrow fc1, two epochs.
TINY = ["--config.image_size=8", "--config.model.hidden=64", "--config.num_epochs=2", "--config.batch_size=64"]


def train(argv):
    return cli.run(cli.train_main, ["train.py", *argv])


def evaluate(argv):
    return cli.run(cli.evaluate_main, ["evaluate.py", *argv])


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    assert train(["--config", DEFAULT_CONFIG, "--workdir", workdir, *TINY]) == 0
    return workdir


def test_training_writes_config_metrics_and_checkpoints(trained_run):
    with open(os.path.join(trained_run, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [1, 2]
    # 1347 training digits in batches of 64: 21 steps an epoch, remainder dropped.
    assert [r["step"] for r in records] == [21, 42]
    assert set(records[0]) == {
        "epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "images_per_second",
    }
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[1]["test_accuracy"] > 0.8
    with open(os.path.join(trained_run, "config.json")) as f:
        config = json.load(f)
    assert config["image_size"] == 8 and config["model"]["hidden"] == 64
    assert sorted(os.listdir(os.path.join(trained_run, "checkpoints"))) == ["21", "42"]


def test_evaluate_reproduces_the_training_accuracy(trained_run, capsys):
    assert evaluate(["--config", DEFAULT_CONFIG, "--workdir", trained_run, *TINY]) == 0
    with open(os.path.join(trained_run, "eval_42.json")) as f:
        result = json.load(f)
    with open(os.path.join(trained_run, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    assert result["step"] == 42
    assert result["num_examples"] == 450
    assert result["accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-9)
    assert result["loss"] == pytest.approx(last["test_loss"], rel=1e-5)
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 450
    assert np.trace(confusion) / 450 == pytest.approx(result["accuracy"])
    assert len(result["per_class_accuracy"]) == 10
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
    model = SeedCNN(10, hidden=64)
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
    assert evaluate(["--config", DEFAULT_CONFIG, "--workdir", trained_run, "--step", "21", *TINY]) == 0
    with open(os.path.join(trained_run, "eval_21.json")) as f:
        assert json.load(f)["step"] == 21


def test_a_finished_run_resumes_without_training_again(trained_run, capsys):
    assert train(["--config", DEFAULT_CONFIG, "--workdir", trained_run, *TINY]) == 0
    assert "resumed from step 42" in capsys.readouterr().out
    with open(os.path.join(trained_run, "metrics.jsonl")) as f:
        assert len(f.readlines()) == 2


def test_a_checkpoint_of_another_model_is_refused(trained_run, capsys):
    argv = ["--config", DEFAULT_CONFIG, "--workdir", trained_run, *TINY, "--config.model.hidden=32"]
    assert train(argv) == 2
    line = one_error_line(capsys)
    assert "holds another run (checkpoint step 42): config.model.hidden 64 -> 32;" in line
    # Even on purpose, params of other shapes cannot carry over.
    assert train([*argv, "--allow_config_change"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is from another model" in line and "(64,)" in line and "(32,)" in line


def test_a_missing_config_file(capsys):
    assert train(["--config", "configs/nope.py"]) == 2
    assert "config file configs/nope.py does not exist" in one_error_line(capsys)


def test_an_unknown_config_key(capsys):
    assert train(["--config", DEFAULT_CONFIG, "--config.num_epoch=3"]) == 2
    assert "the config has no key 'num_epoch'" in one_error_line(capsys)


def test_a_batch_size_that_does_not_divide_by_the_devices(tmp_path, capsys):
    assert train(["--config", DEFAULT_CONFIG, "--workdir", str(tmp_path), *TINY, "--config.batch_size=12"]) == 2
    assert "config.batch_size=12 does not divide by the 8 devices" in one_error_line(capsys)
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "0"))


def test_a_missing_data_root(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    argv = ["--config", DEFAULT_CONFIG, "--workdir", str(tmp_path / "w"),
            "--config.data.source=image_folder", f"--config.data.root={missing}"]
    assert train(argv) == 2
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
    assert train(argv) == 2
    assert expected in one_error_line(capsys)


def test_an_unreadable_image_is_named_by_its_path(tmp_path, capsys):
    write_folder(tmp_path / "data", {"train": {"a": 8, "b": 8}, "test": {"a": 8}})
    bad = tmp_path / "data" / "train" / "b" / "3.png"
    bad.write_bytes(b"this is not a png")
    argv = ["--config", DEFAULT_CONFIG, "--workdir", str(tmp_path / "w"), *TINY,
            "--config.data.source=image_folder", f"--config.data.root={tmp_path / 'data'}",
            "--config.batch_size=8"]
    assert train(argv) == 2
    assert str(bad) in one_error_line(capsys)


def test_the_exit_status_and_message_of_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--config", DEFAULT_CONFIG, "--config.bogus=1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the config has no key 'bogus'; see fmjax/config.py for every key"
    )
    assert "Traceback" not in result.stderr
