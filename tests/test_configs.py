"""Every file in configs/ loads, names only known keys, and trains a step where its data exists here."""

import glob
import importlib.util
import os

import pytest
import tensorflow_datasets as tfds

from fmjax.config import base_config
from fmjax.run.trainer import train_and_evaluate
from fmjax.tools.evaluate import evaluate_checkpoint

# The shipped configs, not configs/__init__.py.
CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "[!_]*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def flat_keys(config, prefix=""):
    keys = set()
    for key, value in config.items():
        if hasattr(value, "items"):
            keys |= flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_there_are_the_five_configs():
    names = [os.path.basename(p) for p in CONFIGS]
    assert names == ["cifar10.py", "cifar10_resnet.py", "default.py", "mnist.py", "seed.py"]


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_has_exactly_the_base_keys_and_a_header(path):
    config = load(path)
    assert flat_keys(config) == flat_keys(base_config())
    with open(path) as f:
        header = f.read().split("from fmjax")[0]
    assert f"python train.py --config configs/{os.path.basename(path)}" in header
    assert "Expect:" in header


def test_seed_config_is_the_seed():
    config = load(os.path.join(os.path.dirname(CONFIGS[0]), "seed.py"))
    assert (config.image_size, config.num_epochs, config.learning_rate) == (224, 10, 1e-3)
    assert (config.model.name, config.model.features, config.model.kernel_size, config.model.hidden) == (
        "seed_cnn", 32, 5, 1000,
    )
    assert (config.optimizer.name, config.data.source, config.data.normalize) == ("adam", "image_folder", False)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar10_resnet"])
def test_tfds_configs_train_on_mock_data(name, tmp_path):
    config = load(os.path.join(os.path.dirname(CONFIGS[0]), f"{name}.py"))
    config.image_size = 8
    config.model.hidden = 16
    config.model.resnet_width = 4
    config.model.resnet_stage_sizes = (1, 1)
    config.schedule.warmup_epochs = 0.5  # of the single epoch's two steps
    config.batch_size = 16
    config.num_epochs = 1
    with tfds.testing.mock_data(num_examples=40):
        record = train_and_evaluate(config, str(tmp_path))
        evaluated = evaluate_checkpoint(str(tmp_path), config=config)
    # The saved params (and the ResNet's batch statistics) give the same accuracy.
    assert evaluated["accuracy"] == record["test_accuracy"]
    assert evaluated["num_examples"] == 40
    assert record["step"] == 40 // 16
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert os.path.isdir(tmp_path / "checkpoints" / "2")
