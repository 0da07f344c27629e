"""Pixels to the model's input: scaling, normalisation, and training-only augmentation.

The functions are pure and run inside the compiled step; these tests call
them, and Dataset.prepare built from them, on the host. Augmentation (flips
and padded crops) is reproducible from (seed, epoch, example).
"""

import jax
import numpy as np
import pytest
from conftest import prepared

from fmjax.config import base_config
from fmjax.data import load_dataset
from fmjax.data.dataset import Dataset
from fmjax.data.preprocess import (
    Augmentation,
    augment_images,
    normalized,
    preprocess_images,
    unit_range,
)
from fmjax.data.split import array_split
from fmjax.errors import UserError

BATCH = 64


# ---------------------------------------------------------------- the pure functions


def test_uint8_is_scaled_as_to_tensor_does_and_floats_are_kept():
    pixels = np.array([[[[0, 51, 255]]]], np.uint8)
    np.testing.assert_array_equal(unit_range(pixels), np.float32([[[[0.0, 0.2, 1.0]]]]))
    assert np.asarray(unit_range(pixels)).dtype == np.float32
    unit = np.array([[[[0.25, 0.5, 1.0]]]], np.float64)
    np.testing.assert_array_equal(unit_range(unit), unit.astype(np.float32))


def test_normalisation_is_per_channel():
    images = np.full((1, 2, 2, 3), 0.6, np.float32)
    out = normalized(images, (0.5, 0.4, 0.2), (0.5, 0.5, 0.5))
    np.testing.assert_allclose(out, np.broadcast_to([0.2, 0.4, 0.8], (1, 2, 2, 3)), atol=1e-6)
    assert normalized(images) is images


def test_preprocess_images_is_scaling_then_normalisation():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 3), np.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    expected = (pixels.astype(np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(preprocess_images(pixels, mean, std), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(preprocess_images(pixels), pixels / np.float32(255))
    # Compiled as the step compiles it (XLA may divide by multiplying by the inverse).
    compiled = jax.jit(lambda images: preprocess_images(images, mean, std))
    np.testing.assert_allclose(compiled(pixels), expected, rtol=1e-6, atol=1e-6)


def test_augment_images_crops_a_window_of_the_black_padded_image_and_flips():
    image = np.arange(4 * 4 * 1, dtype=np.float32).reshape(1, 4, 4, 1) + 1
    images = np.repeat(image, 16, axis=0)
    crop = augment_images(images, Augmentation(random_crop_padding=1), 3, 0, np.arange(16))
    padded = np.pad(image[0], ((1, 1), (1, 1), (0, 0)))
    windows = {(dy, dx): padded[dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)}
    offsets = [next(o for o, w in windows.items() if np.array_equal(w, c)) for c in np.asarray(crop)]
    assert len(set(offsets)) > 1  # 16 images, 9 windows: not all the same
    flip = np.asarray(augment_images(images, Augmentation(horizontal_flip=True), 3, 0, np.arange(16)))
    mirrored = [np.array_equal(f, image[0][:, ::-1]) for f in flip]
    assert all(m or np.array_equal(f, image[0]) for m, f in zip(mirrored, flip))
    assert 0 < sum(mirrored) < 16
    # Nothing enabled: the images as they are.
    assert augment_images(images, Augmentation(), 3, 0, np.arange(16)) is images


def test_augmentation_depends_on_seed_epoch_and_index_alone():
    images = np.random.default_rng(1).random((8, 6, 6, 3), np.float32)
    augmentation = Augmentation(random_crop_padding=2, horizontal_flip=True)
    first = np.asarray(augment_images(images, augmentation, 5, 2, np.arange(8)))
    # The same example at another position in the batch is changed the same way.
    order = np.random.default_rng(2).permutation(8)
    shuffled = np.asarray(augment_images(images[order], augmentation, 5, 2, order))
    np.testing.assert_array_equal(shuffled, first[order])
    assert not np.array_equal(np.asarray(augment_images(images, augmentation, 5, 3, np.arange(8))), first)
    assert not np.array_equal(np.asarray(augment_images(images, augmentation, 6, 2, np.arange(8))), first)


def test_prepare_scales_uint8_as_to_tensor_and_drops_the_index():
    images = np.array([[[[0], [255]], [[51], [102]]]], np.uint8)
    split = array_split(images, np.array([0]), 2)
    assert split.pixel_dtype == np.uint8
    dataset = Dataset("probe", ["only"], (2, 2, 3), 0, split, split)
    (batch,) = dataset.test_batches(1)
    np.testing.assert_array_equal(batch["image"][0, ..., 1], images[0, ..., 0])
    batch = prepared(dataset, batch)
    assert "index" not in batch
    np.testing.assert_allclose(batch["image"][0, ..., 0], [[0.0, 1.0], [0.2, 0.4]], rtol=1e-7)


def test_configured_normalisation_is_applied_by_prepare():
    config = base_config()
    config.image_size = 8
    config.data.update(normalize=True, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    normalised = load_dataset(config)
    config.data.normalize = False
    plain = load_dataset(config)
    expected = normalized(prepared(plain, next(plain.test_batches(4)))["image"], (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    np.testing.assert_array_equal(prepared(normalised, next(normalised.test_batches(4)))["image"], expected)


# ---------------------------------------------------------------- augmentation through Dataset.prepare


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
