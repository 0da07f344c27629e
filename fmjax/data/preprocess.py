"""Pixels to the model's input: pure functions, run inside the compiled step.

`preprocess_images` scales pixels to [0, 1] and normalises them, as for
evaluation or prediction. Training augments between the two steps
(`unit_range`, `augment_images`, `normalized`): each image is changed as
(seed, epoch, example index) decides, so a resumed run augments as an
uninterrupted one, and a padded crop's border is black before normalisation.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

PixelStats = Optional[tuple[float, float, float]]


def preprocess_images(
    images: jnp.ndarray, pixel_mean: PixelStats = None, pixel_std: PixelStats = None
) -> jax.Array:
    """The model's input from pixels, as for evaluation: scaled to [0, 1], then normalised per channel.

    Args:
      images: pixels [B, H, W, 3], uint8 or float in [0, 1]; see unit_range.
      pixel_mean, pixel_std: see normalized.

    Returns:
      float32 [B, H, W, 3].
    """
    return normalized(unit_range(images), pixel_mean, pixel_std)


def unit_range(images: jnp.ndarray) -> jnp.ndarray:
    """Pixels as float32 in [0, 1]: uint8 divided by 255 (as torchvision's ToTensor does), others cast."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def normalized(
    images: jnp.ndarray, pixel_mean: PixelStats = None, pixel_std: PixelStats = None
) -> jnp.ndarray:
    """(images - pixel_mean) / pixel_std per RGB channel (3 floats each); `images` as they are when both are None."""
    if pixel_mean is None:
        return images
    return (images - jnp.asarray(pixel_mean, jnp.float32)) / jnp.asarray(pixel_std, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random changes to training images.

    Attributes:
      random_crop_padding: pixels of black border added on each side before a
        random crop back to the image size; 0 turns it off.
      horizontal_flip: mirror each image with probability 1/2.
    """

    random_crop_padding: int = 0
    horizontal_flip: bool = False

    @property
    def enabled(self) -> bool:
        return self.random_crop_padding > 0 or self.horizontal_flip


def example_keys(seed: int, epoch: jnp.ndarray, indices: jnp.ndarray) -> jax.Array:
    """One PRNG key per example, from (seed, epoch, example index) alone."""
    epoch_key = jax.random.fold_in(jax.random.key(seed), epoch)
    return jax.vmap(lambda index: jax.random.fold_in(epoch_key, index))(indices)


def augment_images(
    images: jnp.ndarray,
    augmentation: Augmentation,
    seed: int,
    epoch: jnp.ndarray,
    indices: jnp.ndarray,
) -> jax.Array:
    """`images` [B, H, W, C] (any dtype), each changed as its (seed, epoch, index) decides.

    Args:
      images: the batch's pixels.
      augmentation: what to do; nothing when it is not enabled.
      seed: the run's seed.
      epoch: the training epoch, an int or a traced int scalar.
      indices: int [B], each image's example index in its split.
    """
    if not augmentation.enabled:
        return images
    keys = example_keys(seed, epoch, indices)
    return jax.vmap(lambda image, key: _augment_one(image, key, augmentation))(images, keys)


def _augment_one(image: jnp.ndarray, key: jax.Array, augmentation: Augmentation) -> jax.Array:
    crop_key, flip_key = jax.random.split(key)
    if augmentation.random_crop_padding > 0:
        pad = augmentation.random_crop_padding
        height, width, channels = image.shape
        padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        top, left = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
        image = jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, channels))
    if augmentation.horizontal_flip:
        image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    return image


def prepare_batch(
    batch: dict,
    epoch: Optional[jnp.ndarray] = None,
    *,
    seed: int,
    augmentation: Augmentation,
    pixel_mean: Optional[tuple[float, float, float]],
    pixel_std: Optional[tuple[float, float, float]],
) -> dict:
    """The model's input from a batch of pixels: a pure function, run inside the compiled step.

    Scales pixels to [0, 1], augments training images (when `epoch` is
    given) from (seed, epoch, example index), then normalises; without
    `epoch` this is preprocess_images.

    Args:
      batch: {"image": pixels [B, H, W, 3], "index": int [B], ...}; the
        index is needed only to augment.
      epoch: the training epoch; None for evaluation (no augmentation).
      seed, augmentation: what decides and what is done to training images.
      pixel_mean, pixel_std: the per-channel normalisation, or None.

    Returns:
      `batch` with "image" float32 [B, H, W, 3] and without "index".
    """
    batch = dict(batch)
    indices = batch.pop("index", None)
    images = unit_range(batch["image"])
    if epoch is not None:
        images = augment_images(images, augmentation, seed, epoch, indices)
    batch["image"] = normalized(images, pixel_mean, pixel_std)
    return batch

