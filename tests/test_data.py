"""Tests of fmjax.data's load_dataset: the digits and TFDS sources, and config mistakes.

Batching is tested in test_batches, preprocessing in test_preprocess, image
folders in test_image_folder.
"""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import prepared
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fmjax.config import base_config
from fmjax.data import Dataset, load_dataset
from fmjax.errors import UserError

IMAGE_SIZE = 8


def make_config(**data_fields) -> ml_collections.ConfigDict:
    config = base_config()
    config.image_size = IMAGE_SIZE
    config.data.std = (0.25, 0.25, 0.25)
    config.data.update(data_fields)
    return config


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(make_config())


def expected_digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    raw = load_digits()
    _, test_images, _, test_labels = train_test_split(
        raw.images, raw.target, test_size=0.25, random_state=0, stratify=raw.target
    )
    return test_images / 16.0, test_labels


def concatenated(batches, key: str) -> np.ndarray:
    return np.concatenate([batch[key] for batch in batches])


def assert_one_line_naming(error: pytest.ExceptionInfo, thing) -> None:
    message = str(error.value)
    assert str(thing) in message
    assert "\n" not in message


# ---------------------------------------------------------------- digits


def test_digits_sizes_labels_and_shapes(digits):
    assert (digits.num_train, digits.num_test) == (1347, 450)
    assert digits.num_classes == 10
    assert digits.class_names == [str(digit) for digit in range(10)]
    assert digits.image_shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert digits.steps_per_epoch(100) == 13
    assert digits.num_test_batches(100) == 5
    batch = next(digits.train_batches(0, 32))
    assert batch["image"].shape == (32, IMAGE_SIZE, IMAGE_SIZE, 3)
    # Stratified: every class appears in the test split.
    test_labels = concatenated(digits.test_batches(450), "label")
    assert set(test_labels) == set(range(10))


def test_digits_test_split_is_in_order_with_grey_copied_to_rgb(digits):
    images, labels = expected_digits_test_split()
    batch = next(digits.test_batches(450))
    np.testing.assert_array_equal(batch["label"], labels)
    # At the source's own 8x8 size, resizing leaves the pixels as they are.
    for channel in range(3):
        np.testing.assert_allclose(batch["image"][..., channel], images, atol=1e-6)


def test_config_mistakes_are_user_errors():
    with pytest.raises(UserError, match="'csv'"):
        load_dataset(make_config(source="csv"))
    with pytest.raises(UserError, match="test_fraction"):
        load_dataset(make_config(test_fraction=1.5))
    with pytest.raises(UserError, match="config.data.std"):
        load_dataset(make_config(normalize=True, std=(0.5, 0.0, 0.5)))


# ---------------------------------------------------------------- tfds


def test_tfds_mnist_from_mock_data():
    with tfds.testing.mock_data(num_examples=24):
        dataset = load_dataset(make_config(source="tfds", name="mnist"))
    assert dataset.num_classes == 10
    assert dataset.class_names == [str(digit) for digit in range(10)]
    assert (dataset.num_train, dataset.num_test) == (24, 24)
    batch = next(dataset.train_batches(0, 8))
    assert batch["image"].dtype == np.uint8  # mnist's 8-bit pixels, kept as they are
    batch = prepared(dataset, batch)
    assert batch["image"].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(batch["image"][..., 0] * 255, np.round(batch["image"][..., 0] * 255))
    # Grey source: the three channels are copies.
    np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])


def test_tfds_absent_data_set_says_how_to_prepare_it(tmp_path):
    empty_data_dir = tmp_path / "tfds_data"
    empty_data_dir.mkdir()
    with pytest.raises(UserError) as error:
        load_dataset(make_config(source="tfds", name="mnist", data_dir=str(empty_data_dir)))
    assert_one_line_naming(error, empty_data_dir)
    assert "mnist" in str(error.value) and "tfds build" in str(error.value)


def test_tfds_unknown_name():
    with pytest.raises(UserError, match="'no_such_data_set'"):
        load_dataset(make_config(source="tfds", name="no_such_data_set"))
