"""Every file in configs/ loads, names only known keys, and trains a step where its data exists here."""

import pytest
import tensorflow_datasets as tfds
from conftest import ROOT, load_config, saved_steps

from fmjax.config import base_config
from fmjax.run import rundir
from fmjax.run.trainer import train_and_evaluate
from fmjax.tools.evaluate import evaluate_checkpoint

# The shipped configs' names, not configs/__init__.py.
CONFIGS = sorted(path.stem for path in (ROOT / "configs").glob("[!_]*.py"))


def flat_keys(config, prefix=""):
    keys = set()
    for key, value in config.items():
        if hasattr(value, "items"):
            keys |= flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_there_are_the_five_configs():
    assert CONFIGS == ["cifar10", "cifar10_resnet", "default", "mnist", "seed"]


@pytest.mark.parametrize("name", CONFIGS, ids=lambda name: f"{name}.py")
def test_config_has_exactly_the_base_keys_and_a_header(name):
    config = load_config(name)
    assert flat_keys(config) == flat_keys(base_config())
    header = (ROOT / "configs" / f"{name}.py").read_text().split("from fmjax")[0]
    assert f"python train.py --config configs/{name}.py" in header
    assert "Expect:" in header


def test_seed_config_is_the_seed():
    config = load_config("seed")
    assert (config.image_size, config.num_epochs, config.learning_rate) == (224, 10, 1e-3)
    assert (config.model.name, config.model.features, config.model.kernel_size, config.model.hidden) == (
        "seed_cnn", 32, 5, 1000,
    )
    assert (config.optimizer.name, config.data.source, config.data.normalize) == ("adam", "image_folder", False)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar10_resnet"])
def test_tfds_configs_train_on_mock_data(name, tmp_path):
    config = load_config(name)
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
    assert rundir.read_metrics(str(tmp_path))[-1]["test_accuracy"] == record["test_accuracy"]
    assert saved_steps(tmp_path) == [2]


def test_no_key_is_shadowed_by_a_configdict_method():
    """config.optimizer.update would read as ConfigDict.update, and its flag could not be set."""
    import ml_collections

    def keys(config, prefix=""):
        for name, value in config.items():
            if isinstance(value, ml_collections.ConfigDict):
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield prefix + name

    names = list(keys(base_config()))
    assert "optimizer.update_placement" in names and len(names) > 60
    assert [name for name in names if hasattr(ml_collections.ConfigDict, name.rsplit(".", 1)[-1])] == []
