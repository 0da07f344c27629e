"""A bfloat16 run of configs/default.py trains to within 2 points of the float32 run."""

import pytest
from conftest import load_config

from fmjax.run.trainer import train_and_evaluate

# Test accuracy, in points, by which bfloat16 may trail or lead float32.
TOLERANCE = 0.02


def default_config():
    config = load_config("default")
    # Smaller than the default run, to keep the suite fast; same data and recipe.
    config.image_size = 8
    config.model.hidden = 128
    config.num_epochs = 3
    return config


def test_bfloat16_matches_float32_within_tolerance(tmp_path):
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = default_config()
        config.model.dtype = dtype
        results[dtype] = train_and_evaluate(config, str(tmp_path / dtype))
    assert results["float32"]["test_accuracy"] > 0.9
    assert results["bfloat16"]["test_accuracy"] == pytest.approx(results["float32"]["test_accuracy"], abs=TOLERANCE)
    # Different arithmetic: the runs are not the same run.
    assert results["bfloat16"]["train_loss"] != results["float32"]["train_loss"]
