"""A trained run read from its directory alone: load_trained, and fmjax-evaluate without --config."""

import json

import numpy as np
import pytest
from conftest import DEFAULT_CONFIG, LAST_STEP, TINY, evaluate

from fmjax.errors import UserError
from fmjax.run.checkpoint_reads import restore_params
from fmjax.run.trained import load_trained


def test_load_trained_gives_the_runs_model_params_classes_and_normalisation(tiny_run):
    trained = load_trained(str(tiny_run))
    assert trained.step == LAST_STEP
    assert trained.class_names == [str(digit) for digit in range(10)]
    assert trained.image_size == 8 and trained.config.model.hidden == 32
    params = restore_params(str(tiny_run))
    for name in ("conv1", "fc1", "fc2"):
        np.testing.assert_array_equal(trained.variables["params"][name]["kernel"], params[name]["kernel"])
    assert trained.model.apply(trained.variables, np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 10)
    saved = json.loads((tiny_run / "config.json").read_text())
    assert trained.pixel_mean == (tuple(saved["data"]["mean"]) if saved["data"]["normalize"] else None)


def test_evaluate_needs_only_the_workdir_and_matches_training(tiny_run_copy, capsys):
    trained_accuracy = json.loads((tiny_run_copy / "metrics.jsonl").read_text().splitlines()[-1])["test_accuracy"]
    assert evaluate("--workdir", str(tiny_run_copy)) == 0
    assert f"test accuracy: {trained_accuracy:.2%} over 450 examples" in capsys.readouterr().out
    result = json.loads((tiny_run_copy / f"eval_{LAST_STEP}.json").read_text())
    assert result["accuracy"] == pytest.approx(trained_accuracy, abs=1e-9)


def test_an_explicit_config_is_checked_against_the_runs(tiny_run_copy, capsys):
    overrides = [arg for arg in TINY if arg.startswith("--config.") and "image_size" not in arg]
    argv = ["--config", DEFAULT_CONFIG, *overrides, "--config.image_size=12", "--workdir", str(tiny_run_copy)]
    assert evaluate(*argv) == 2
    assert "trained on 8x8 images, config.image_size is 12" in capsys.readouterr().err


def test_a_missing_or_broken_config_json_is_one_line(tmp_path):
    with pytest.raises(UserError, match="config.json is missing"):
        load_trained(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a config"):
        load_trained(str(tmp_path))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UserError, match="is not valid JSON"):
        load_trained(str(tmp_path))
