"""The data path every source shares: which examples, in what order, as what pixels.

A source supplies, per split, the labels and a function that loads images by
index, already at the run's size: "pixels", uint8 for 8-bit images (as the
seed's own Resize on a PIL image gives them) or float32 in [0, 1] otherwise.
Everything else happens here, the same way for all sources: which indices an
epoch visits and in what order, which of them each process reads, padding
the test split with masked copies so evaluation counts every example
exactly once, and `prepare`, the pure function that turns pixels into the
model's input (scaling, augmentation, normalisation) inside the compiled
step.

Pixels reach the step in one of two ways, with the same values: batches
loaded on the host (`train_batches`, `test_batches`, streamed from the
source a few batches ahead), or gathered on the device from a whole split
loaded once (`split_pixels`), by the same indices.

The order is a pure function of (seed, epoch), augmentation a pure function
of (seed, epoch, example), and a process's share is a slice of each global
batch, so a resumed run reads the same batches as an uninterrupted one and P
processes together read what one process would.
"""

import concurrent.futures
import dataclasses
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from fmjax.core.batch_size import check_global_batch_size
from fmjax.errors import UserError

Batch = dict[str, np.ndarray]
# Batches loaded ahead of the one the step reads.
_PREFETCH_BATCHES = 2


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a source, addressed by example index.

    Attributes:
      labels: int32 [num_examples], the class of each example.
      load: int indices [n] -> pixels [n, H, W, 3] at the run's size, of
        `pixel_dtype`; it raises a UserError naming an example it cannot read.
      pixel_dtype: uint8 (8-bit images) or float32 (values in [0, 1]).
    """

    labels: np.ndarray
    load: Callable[[np.ndarray], np.ndarray]
    pixel_dtype: np.dtype

    @property
    def num_examples(self) -> int:
        return len(self.labels)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """One image [h, w, c] (c 1, 3 or 4) as RGB [size, size, 3], resized as torchvision's Resize does.

    PIL's bilinear filter, which averages the pixels under each output pixel
    when shrinking. uint8 stays uint8, as PIL rounds it; float32 in [0, 1]
    stays float32, each channel resized on its own.
    """
    channels = image[..., :3] if image.shape[-1] == 4 else image
    if channels.shape[:2] != (size, size):
        if channels.dtype == np.uint8:
            squeezed = channels[..., 0] if channels.shape[-1] == 1 else channels
            resized = np.asarray(Image.fromarray(squeezed).resize((size, size), Image.BILINEAR))
            channels = resized.reshape(size, size, -1)
        else:
            channels = np.stack(
                [
                    np.asarray(
                        Image.fromarray(channels[..., c].astype(np.float32), mode="F").resize(
                            (size, size), Image.BILINEAR
                        )
                    )
                    for c in range(channels.shape[-1])
                ],
                axis=-1,
            )
    if channels.shape[-1] == 1:
        channels = np.repeat(channels, 3, axis=-1)
    return np.ascontiguousarray(channels)


def array_split(images: np.ndarray, labels: np.ndarray, image_size: int) -> Split:
    """A split whose images are one array, uint8 in [0, 255] or float in [0, 1], resized once.

    Args:
      images: [num_examples, height, width, channels], channels 1 or 3.
      labels: [num_examples] class indices.
      image_size: the run's image size.
    """
    dtype = np.uint8 if images.dtype == np.uint8 else np.float32
    pixels = np.stack([resize_image(image.astype(dtype), image_size) for image in images])
    return _served_from(pixels, labels)


def _served_from(pixels: np.ndarray, labels: np.ndarray) -> Split:
    """A split over pixels already in memory, [num_examples, H, W, 3]."""
    return Split(
        labels=np.asarray(labels, np.int32),
        load=lambda indices: pixels[np.asarray(indices)],
        pixel_dtype=pixels.dtype,
    )


def shuffled_train_indices(
    seed: int,
    epoch: int,
    num_train: int,
    global_batch_size: int,
    start_batch: int,
    process_index: int,
    process_count: int,
) -> np.ndarray:
    """The train indices a process reads in an epoch, [num_batches, local_batch].

    Row k is this process's contiguous slice of global batch start_batch + k.
    The examples that do not fill a last global batch are left out, and the
    shuffle decides which ones they are.
    """
    num_batches = num_train // global_batch_size
    order = np.random.default_rng([seed, epoch]).permutation(num_train)
    global_batches = order[: num_batches * global_batch_size].reshape(
        num_batches, global_batch_size
    )
    return _process_slice(global_batches[start_batch:], process_index, process_count)


def padded_test_indices(
    num_test: int, global_batch_size: int, process_index: int, process_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """The test indices and mask a process reads, each [num_batches, local_batch].

    Test examples keep their order; the last global batch is filled up with
    copies of example 0 whose mask is 0, so every process gets the same number
    of batches and the mask sums to num_test over all of them.
    """
    num_batches = -(-num_test // global_batch_size)
    positions = np.arange(num_batches * global_batch_size).reshape(
        num_batches, global_batch_size
    )
    is_real = positions < num_test
    indices = np.where(is_real, positions, 0)
    return (
        _process_slice(indices, process_index, process_count).astype(np.int32),
        _process_slice(is_real.astype(np.float32), process_index, process_count),
    )


def _process_slice(
    global_batches: np.ndarray, process_index: int, process_count: int
) -> np.ndarray:
    local_batch = global_batches.shape[1] // process_count
    start = process_index * local_batch
    return global_batches[:, start : start + local_batch]


def example_keys(seed: int, epoch: jnp.ndarray, indices: jnp.ndarray) -> jax.Array:
    """One PRNG key per example, from (seed, epoch, example index) alone."""
    epoch_key = jax.random.fold_in(jax.random.key(seed), epoch)
    return jax.vmap(lambda index: jax.random.fold_in(epoch_key, index))(indices)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random changes to training images, drawn from (seed, epoch, example index).

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

    def apply(self, images: jnp.ndarray, keys: jax.Array) -> jnp.ndarray:
        """`images` [B, H, W, C], each changed as its key in `keys` [B] decides."""
        return jax.vmap(self._apply_one)(images, keys)

    def _apply_one(self, image: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        crop_key, flip_key = jax.random.split(key)
        if self.random_crop_padding > 0:
            pad = self.random_crop_padding
            height, width, channels = image.shape
            padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
            top, left = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
            image = jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, channels))
        if self.horizontal_flip:
            image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
        return image


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set ready to batch: sizes, class names, the two splits and their preprocessing.

    Attributes:
      name: what the data set is called in logs.
      class_names: one name per class, in label order.
      image_shape: (image_size, image_size, 3), the shape of every image.
      seed: decides the training order of every epoch, and the augmentation.
      train_split, test_split: the examples, read by index.
      pixel_mean, pixel_std: per-channel normalisation applied after scaling
        to [0, 1], or None to keep pixels in [0, 1].
      augmentation: what is done to training images only.
    """

    name: str
    class_names: list[str]
    image_shape: tuple[int, int, int]
    seed: int
    train_split: Split = dataclasses.field(repr=False)
    test_split: Split = dataclasses.field(repr=False)
    pixel_mean: tuple[float, float, float] | None = None
    pixel_std: tuple[float, float, float] | None = None
    augmentation: Augmentation = Augmentation()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        return self.train_split.num_examples

    @property
    def num_test(self) -> int:
        return self.test_split.num_examples

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Full global batches per epoch; the remainder is dropped."""
        self._check_train_batch_size(global_batch_size)
        return self.num_train // global_batch_size

    def num_test_batches(self, global_batch_size: int) -> int:
        """Global test batches, the last one padded."""
        check_global_batch_size(global_batch_size)
        return -(-self.num_test // global_batch_size)

    def pixel_bytes(self) -> int:
        """Bytes of both splits' pixels at the run's size: what keeping them in memory costs."""
        per_image = int(np.prod(self.image_shape))
        return sum(
            split.num_examples * per_image * split.pixel_dtype.itemsize
            for split in (self.train_split, self.test_split)
        )

    def train_indices(
        self,
        epoch: int,
        global_batch_size: int,
        *,
        start_batch: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> np.ndarray:
        """int32 [num_batches - start_batch, global_batch_size // process_count]: this process's share of each batch."""
        num_batches = self.steps_per_epoch(global_batch_size)
        _check_processes(global_batch_size, process_index, process_count)
        if not 0 <= start_batch <= num_batches:
            raise ValueError(f"start_batch {start_batch} is outside [0, {num_batches}]")
        return shuffled_train_indices(
            self.seed,
            epoch,
            self.num_train,
            global_batch_size,
            start_batch,
            process_index,
            process_count,
        ).astype(np.int32)

    def test_indices(
        self, global_batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """(indices, mask), each [num_test_batches, local batch]; see padded_test_indices."""
        check_global_batch_size(global_batch_size)
        _check_processes(global_batch_size, process_index, process_count)
        return padded_test_indices(self.num_test, global_batch_size, process_index, process_count)

    def train_batches(
        self,
        epoch: int,
        global_batch_size: int,
        *,
        start_batch: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[Batch]:
        """This process's share of epoch `epoch`, from global batch start_batch on, loaded on the host.

        Yields {"image": pixels [b, H, W, 3], "label": int32 [b], "index":
        int32 [b]} with b = global_batch_size // process_count; `prepare`
        turns one into the model's input. Skipped batches are never read.
        """
        indices = self.train_indices(
            epoch,
            global_batch_size,
            start_batch=start_batch,
            process_index=process_index,
            process_count=process_count,
        )
        return _loaded_ahead(self.train_split, indices, masks=None)

    def test_batches(
        self, global_batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> Iterator[Batch]:
        """This process's share of the test split, in order, padded and masked, loaded on the host.

        Yields {"image", "label", "index", "mask": float32 [b]}; mask is 1.0
        for a real example and 0.0 for padding.
        """
        indices, masks = self.test_indices(
            global_batch_size, process_index=process_index, process_count=process_count
        )
        return _loaded_ahead(self.test_split, indices, masks)

    def prepare(self, batch: dict, epoch: Optional[jnp.ndarray] = None) -> dict:
        """The model's input from a batch of pixels: a pure function, run inside the compiled step.

        Scales pixels to float32 [0, 1] (uint8 as torchvision's ToTensor
        does), augments training images (when `epoch` is given) from (seed,
        epoch, example index), then normalises.

        Args:
          batch: {"image": pixels [B, H, W, 3], "index": int [B], ...}; the
            index is needed only to augment.
          epoch: the training epoch; None for evaluation (no augmentation).

        Returns:
          `batch` with "image" float32 [B, H, W, 3] and without "index".
        """
        batch = dict(batch)
        indices = batch.pop("index", None)
        images = batch["image"]
        images = (
            images.astype(jnp.float32) / 255.0
            if images.dtype == jnp.uint8
            else images.astype(jnp.float32)
        )
        if epoch is not None and self.augmentation.enabled:
            images = self.augmentation.apply(images, example_keys(self.seed, epoch, indices))
        if self.pixel_mean is not None:
            images = (images - jnp.asarray(self.pixel_mean, jnp.float32)) / jnp.asarray(
                self.pixel_std, jnp.float32
            )
        batch["image"] = images
        return batch

    def _check_train_batch_size(self, global_batch_size: int) -> None:
        check_global_batch_size(global_batch_size)
        if global_batch_size > self.num_train:
            raise UserError(
                f"global batch size {global_batch_size} is larger than the "
                f"{self.num_train} training examples of {self.name}; lower the batch size"
            )


def split_pixels(split: Split) -> dict[str, np.ndarray]:
    """A whole split in memory: {"image": pixels [n, H, W, 3], "label": int32 [n]}."""
    return {"image": split.load(np.arange(split.num_examples)), "label": split.labels}


def in_memory(split: Split) -> Split:
    """`split` loaded whole once, then served from memory."""
    return _served_from(split.load(np.arange(split.num_examples)), split.labels)


def _loaded_ahead(
    split: Split, indices: np.ndarray, masks: Optional[np.ndarray]
) -> Iterator[Batch]:
    """Batches of `split` at the rows of `indices`, each loaded while the ones before it are used."""

    def load(row: int) -> Batch:
        batch = {
            "image": split.load(indices[row]),
            "label": split.labels[indices[row]],
            "index": indices[row].astype(np.int32),
        }
        if masks is not None:
            batch["mask"] = masks[row]
        return batch

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as loader:
        ahead = [loader.submit(load, row) for row in range(min(_PREFETCH_BATCHES, len(indices)))]
        for row in range(len(indices)):
            batch = ahead.pop(0).result()
            if row + _PREFETCH_BATCHES < len(indices):
                ahead.append(loader.submit(load, row + _PREFETCH_BATCHES))
            yield batch


def _check_processes(global_batch_size: int, process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index {process_index} is outside [0, {process_count})"
        )
    check_global_batch_size(global_batch_size, process_count=process_count)
