"""Training-only augmentation: flips and padded crops, reproducible from (seed, epoch, example).

Augmentation happens in Dataset.prepare, inside the compiled step; these
tests call it on the host.
"""

import numpy as np
import pytest
from conftest import prepared

from fmjax.config import base_config
from fmjax.data import load_dataset
from fmjax.errors import UserError

BATCH = 64


def dataset(padding=0, flip=False):
    config = base_config()
    config.image_size = 8
    config.data.random_crop_padding = padding
    config.data.horizontal_flip = flip
    return load_dataset(config)


def train_batches(data, epoch, **kwargs):
    """The model's input for each training batch of `epoch`."""
    return [prepared(data, batch, epoch) for batch in data.train_batches(epoch, BATCH, **kwargs)]


@pytest.fixture(scope="module")
def plain_batch():
    return train_batches(dataset(), 0)[0]


def test_flip_mirrors_about_half_of_the_images_and_nothing_else(plain_batch):
    flipped = train_batches(dataset(flip=True), 0)[0]
    np.testing.assert_array_equal(flipped["label"], plain_batch["label"])
    mirrored = 0
    for original, augmented in zip(plain_batch["image"], flipped["image"]):
        if np.array_equal(augmented, original[:, ::-1]) and not np.array_equal(augmented, original):
            mirrored += 1
        else:
            np.testing.assert_array_equal(augmented, original)
    assert 16 <= mirrored <= 48


def test_padded_crop_is_a_window_of_the_black_padded_image(plain_batch):
    cropped = train_batches(dataset(padding=2), 0)[0]
    shifted = 0
    for original, augmented in zip(plain_batch["image"], cropped["image"]):
        padded = np.pad(original, ((2, 2), (2, 2), (0, 0)))
        windows = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.allclose(padded[dy : dy + 8, dx : dx + 8], augmented, atol=1e-6)
        ]
        assert windows, "every crop is one of the 25 windows"
        shifted += (2, 2) not in windows
    assert shifted > BATCH // 2


def test_augmentation_is_reproducible_per_epoch_and_resumable():
    data = dataset(padding=2, flip=True)
    first = train_batches(data, 3)
    again = train_batches(data, 3)
    resumed = train_batches(data, 3, start_batch=2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    for a, b in zip(first[2:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    other_epoch = train_batches(data, 4)[0]
    assert not np.array_equal(other_epoch["image"], first[0]["image"])


def test_test_images_are_never_augmented():
    plain = prepared(dataset(), next(dataset().test_batches(BATCH)))
    augmented_data = dataset(padding=2, flip=True)
    augmented = prepared(augmented_data, next(augmented_data.test_batches(BATCH)))
    np.testing.assert_array_equal(plain["image"], augmented["image"])


def test_negative_padding_is_a_user_error():
    with pytest.raises(UserError, match="config.data.random_crop_padding is -1"):
        dataset(padding=-1)
