"""Training-only augmentation: flips and padded crops, reproducible from (seed, epoch, example)."""

import numpy as np
import pytest

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


@pytest.fixture(scope="module")
def plain_batch():
    return next(dataset().train_batches(0, BATCH))


def test_flip_mirrors_about_half_of_the_images_and_nothing_else(plain_batch):
    flipped = next(dataset(flip=True).train_batches(0, BATCH))
    np.testing.assert_array_equal(flipped["label"], plain_batch["label"])
    mirrored = 0
    for original, augmented in zip(plain_batch["image"], flipped["image"]):
        if np.array_equal(augmented, original[:, ::-1]) and not np.array_equal(augmented, original):
            mirrored += 1
        else:
            np.testing.assert_array_equal(augmented, original)
    assert 16 <= mirrored <= 48


def test_padded_crop_is_a_window_of_the_black_padded_image(plain_batch):
    cropped = next(dataset(padding=2).train_batches(0, BATCH))
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
    first = list(data.train_batches(3, BATCH))
    again = list(data.train_batches(3, BATCH))
    resumed = list(data.train_batches(3, BATCH, start_batch=2))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    for a, b in zip(first[2:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    other_epoch = next(data.train_batches(4, BATCH))
    assert not np.array_equal(other_epoch["image"], first[0]["image"])


def test_test_images_are_never_augmented():
    plain = next(dataset().test_batches(BATCH))
    augmented = next(dataset(padding=2, flip=True).test_batches(BATCH))
    np.testing.assert_array_equal(plain["image"], augmented["image"])


def test_negative_padding_is_a_user_error():
    with pytest.raises(UserError, match="config.data.random_crop_padding is -1"):
        dataset(padding=-1)
