"""A trained run read from its directory alone: load_trained, and fmjax-evaluate without --config."""

import json
import os

import numpy as np
import pytest

from fmjax import cli
from fmjax.errors import UserError
from fmjax.run.checkpoint_reads import restore_params
from fmjax.run.trained import load_trained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.image_size=8", "--config.model.hidden=32", "--config.num_epochs=1", "--config.batch_size=64"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    argv = ["train.py", "--config", os.path.join(ROOT, "configs", "default.py"), "--workdir", workdir, *TINY]
    assert cli.run(cli.train_main, argv) == 0
    return workdir


def test_load_trained_gives_the_runs_model_params_classes_and_normalisation(run_dir):
    trained = load_trained(run_dir)
    assert trained.step == 21  # 1,347 training digits, batches of 64
    assert trained.class_names == [str(digit) for digit in range(10)]
    assert trained.image_size == 8 and trained.config.model.hidden == 32
    params = restore_params(run_dir)
    for name in ("conv1", "fc1", "fc2"):
        np.testing.assert_array_equal(trained.variables["params"][name]["kernel"], params[name]["kernel"])
    logits = trained.model.apply(trained.variables, np.zeros((2, 8, 8, 3), np.float32))
    assert logits.shape == (2, 10)
    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    assert trained.pixel_mean == (tuple(saved["data"]["mean"]) if saved["data"]["normalize"] else None)


def test_evaluate_needs_only_the_workdir_and_matches_training(run_dir, capsys):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        trained_accuracy = json.loads(f.read().splitlines()[-1])["test_accuracy"]
    assert cli.run(cli.evaluate_main, ["evaluate.py", "--workdir", run_dir]) == 0
    assert f"test accuracy: {trained_accuracy:.2%} over 450 examples" in capsys.readouterr().out
    with open(os.path.join(run_dir, "eval_21.json")) as f:
        assert json.load(f)["accuracy"] == pytest.approx(trained_accuracy, abs=1e-9)


def test_an_explicit_config_is_checked_against_the_runs(run_dir, capsys):
    argv = ["evaluate.py", "--config", os.path.join(ROOT, "configs", "default.py"), "--workdir", run_dir]
    assert cli.run(cli.evaluate_main, [*argv, *TINY[:-1], "--config.image_size=12"]) == cli.EXIT_USER_ERROR
    assert "trained on 8x8 images, config.image_size is 12" in capsys.readouterr().err


def test_a_missing_or_broken_config_json_is_one_line(run_dir, tmp_path):
    with pytest.raises(UserError, match="config.json is missing"):
        load_trained(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a config"):
        load_trained(str(tmp_path))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UserError, match="is not valid JSON"):
        load_trained(str(tmp_path))
