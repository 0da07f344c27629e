"""A TFDS data set prepared on disk from local image files, as `tfds build` leaves one, trains and evaluates."""

import os

import numpy as np
import pytest
from PIL import Image

from fmjax.config import base_config
from fmjax.data import load_dataset
from fmjax.run import trainer
from fmjax.tools.evaluate import evaluate_checkpoint

CLASSES = ["circle", "square", "triangle"]
PER_CLASS = {"train": 8, "test": 3}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Image files on disk, and a TFDS builder of this test's own that prepares them under data_dir."""
    import tensorflow_datasets as tfds

    files = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    expected = {}
    for split, count in PER_CLASS.items():
        for label, name in enumerate(CLASSES):
            for i in range(count):
                path = files / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (12, 12, 3), np.uint8)
                Image.fromarray(pixels).save(path)
                expected[(split, label, pixels.tobytes())] = True

    class FmjaxTestShapes(tfds.core.GeneratorBasedBuilder):
        """Shapes drawn as PNG files, read from a local folder."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {"image": tfds.features.Image(shape=(12, 12, 3)), "label": tfds.features.ClassLabel(names=CLASSES)}
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(files / split) for split in PER_CLASS}

        def _generate_examples(self, folder):
            for name in CLASSES:
                for path in sorted((folder / name).iterdir()):
                    yield f"{name}/{path.name}", {"image": str(path), "label": name}

    data_dir = tmp_path_factory.mktemp("tfds_data")
    FmjaxTestShapes(data_dir=str(data_dir)).download_and_prepare()
    return data_dir, expected


def config(data_dir):
    config = base_config()
    config.data.source = "tfds"
    config.data.name = "fmjax_test_shapes"
    config.data.data_dir = str(data_dir)
    config.image_size = 12
    config.model.hidden = 16
    config.batch_size = 8
    config.num_epochs = 2
    return config


def test_counts_and_labels_are_the_files(prepared):
    data_dir, expected = prepared
    assert any(name.endswith(".tfrecord-00000-of-00001") for _, _, names in os.walk(data_dir) for name in names)
    dataset = load_dataset(config(data_dir))
    assert dataset.class_names == CLASSES
    assert (dataset.num_train, dataset.num_test) == (24, 9)
    for split_name, split in (("train", dataset.train_split), ("test", dataset.test_split)):
        pixels = split.load(np.arange(split.num_examples))
        assert pixels.dtype == np.uint8
        found = {(split_name, int(label), image.tobytes()) for image, label in zip(pixels, split.labels)}
        assert found == {key for key in expected if key[0] == split_name}


def test_trains_and_evaluates_to_the_same_accuracy(prepared, tmp_path):
    data_dir, _ = prepared
    record = trainer.train_and_evaluate(config(data_dir), str(tmp_path))
    assert record["step"] == 2 * 24 // 8
    result = evaluate_checkpoint(str(tmp_path), config=config(data_dir))
    assert result["num_examples"] == 9
    assert result["accuracy"] == record["test_accuracy"]
