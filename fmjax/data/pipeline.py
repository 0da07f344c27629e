"""The index-based tf.data pipeline every source shares.

A source supplies, per split, the labels and a TensorFlow function that reads
image `i`. Everything else happens here, the same way for all sources: which
indices an epoch visits and in what order, which of them each process reads,
decoding, resizing, normalising, batching, and padding the test split with
masked copies so evaluation counts every example exactly once.

The order is a pure function of (seed, epoch), and a process's share is a
slice of each global batch, so a resumed run reads the same batches as an
uninterrupted one and P processes together read what one process would.
"""

import dataclasses
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from fmjax.errors import UserError


def _hide_gpus_from_tensorflow() -> None:
    # TensorFlow only feeds the input pipeline; left alone it would reserve
    # accelerator memory that JAX needs.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TensorFlow was initialised before fmjax was imported; its devices
        # can no longer change, so whoever initialised it chose already.
        pass


_hide_gpus_from_tensorflow()

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a source, addressed by example index.

    Attributes:
      labels: int32 [num_examples], the class of each example.
      read_image: maps a scalar int64 index tensor to that example's image,
        float32 [height, width, channels] in [0, 1] with 1 or 3 channels.
      find_unreadable: given the indices of a stream that failed to decode,
        in order, returns the UserError naming the first bad one, or None when
        the split cannot hold unreadable examples or none is found.
    """

    labels: np.ndarray
    read_image: Callable[[tf.Tensor], tf.Tensor]
    find_unreadable: Callable[[np.ndarray], UserError | None] | None = None

    @property
    def num_examples(self) -> int:
        return len(self.labels)


def in_memory_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """A split whose images are one array, uint8 in [0, 255] or float in [0, 1].

    Args:
      images: [num_examples, height, width, channels], channels 1 or 3.
      labels: [num_examples] class indices.
    """
    images_tensor = tf.constant(images)
    scale = uint8_to_unit_range if images.dtype == np.uint8 else tf.identity
    return Split(
        labels=np.asarray(labels, np.int32),
        read_image=lambda index: scale(tf.gather(images_tensor, index)),
    )


def uint8_to_unit_range(image: tf.Tensor) -> tf.Tensor:
    """float32 pixels in [0, 1] from uint8 ones, as torchvision's ToTensor scales them."""
    return tf.cast(image, tf.float32) / 255.0


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
        _process_slice(indices, process_index, process_count),
        _process_slice(is_real.astype(np.float32), process_index, process_count),
    )


def _process_slice(
    global_batches: np.ndarray, process_index: int, process_count: int
) -> np.ndarray:
    local_batch = global_batches.shape[1] // process_count
    start = process_index * local_batch
    return global_batches[:, start : start + local_batch]


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

    def apply(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """`image` [H, W, C] in [0, 1], changed as `seed` (int64 [2]) decides."""
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if self.random_crop_padding > 0:
            height, width, channels = image.shape
            pad = self.random_crop_padding
            image = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
            image = tf.image.stateless_random_crop(image, (height, width, channels), seed=crop_seed)
        if self.horizontal_flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return image


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set ready to batch: sizes, class names and the two splits.

    Attributes:
      name: what the data set is called in logs.
      class_names: one name per class, in label order.
      image_shape: (image_size, image_size, 3), the shape of every image.
      seed: decides the training order of every epoch.
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
        _check_positive_batch_size(global_batch_size)
        return -(-self.num_test // global_batch_size)

    def train_batches(
        self,
        epoch: int,
        global_batch_size: int,
        *,
        start_batch: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[Batch]:
        """This process's share of epoch `epoch`, from global batch start_batch on.

        Yields {"image": float32 [b, H, W, 3], "label": int32 [b]} with
        b = global_batch_size // process_count. Skipped batches are never read.
        """
        num_batches = self.steps_per_epoch(global_batch_size)
        _check_processes(global_batch_size, process_index, process_count)
        if not 0 <= start_batch <= num_batches:
            raise ValueError(
                f"start_batch {start_batch} is outside [0, {num_batches}]"
            )
        indices = shuffled_train_indices(
            self.seed,
            epoch,
            self.num_train,
            global_batch_size,
            start_batch,
            process_index,
            process_count,
        )
        augment_seeds = None
        if self.augmentation.enabled:
            # Each example's randomness depends on the run's seed, the epoch and
            # the example alone, so a resumed run draws the same crops and flips.
            augment_seeds = np.stack(
                [
                    np.full(indices.size, self.seed * 1_000_003 + epoch, np.int64),
                    indices.reshape(-1).astype(np.int64),
                ],
                axis=1,
            )
        return self._batches(self.train_split, indices, mask=None, augment_seeds=augment_seeds)

    def test_batches(
        self, global_batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> Iterator[Batch]:
        """This process's share of the test split, in order, padded and masked.

        Yields {"image", "label", "mask": float32 [b]}; mask is 1.0 for a real
        example and 0.0 for padding.
        """
        _check_positive_batch_size(global_batch_size)
        _check_processes(global_batch_size, process_index, process_count)
        indices, mask = padded_test_indices(
            self.num_test, global_batch_size, process_index, process_count
        )
        return self._batches(self.test_split, indices, mask)

    def _check_train_batch_size(self, global_batch_size: int) -> None:
        _check_positive_batch_size(global_batch_size)
        if global_batch_size > self.num_train:
            raise UserError(
                f"global batch size {global_batch_size} is larger than the "
                f"{self.num_train} training examples of {self.name}; lower the batch size"
            )

    def _preprocess(self, image: tf.Tensor, augment_seed: tf.Tensor | None = None) -> tf.Tensor:
        height, width = self.image_shape[:2]
        # Antialiasing makes downscaling average pixels the way PIL's resize
        # (and so torchvision's) does, instead of skipping them.
        image = tf.image.resize(image, (height, width), antialias=True)
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        if augment_seed is not None:
            image = self.augmentation.apply(tf.ensure_shape(image, self.image_shape), augment_seed)
        if self.pixel_mean is not None:
            image = (image - self.pixel_mean) / self.pixel_std
        return tf.ensure_shape(image, self.image_shape)

    def _batches(
        self,
        split: Split,
        indices: np.ndarray,
        mask: np.ndarray | None,
        augment_seeds: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        num_batches, local_batch = indices.shape
        flat_indices = indices.reshape(-1).astype(np.int64)
        columns = {"index": flat_indices, "label": split.labels[flat_indices]}
        if mask is not None:
            columns["mask"] = mask.reshape(-1)
        if augment_seeds is not None:
            columns["augment_seed"] = augment_seeds

        def read_example(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            image = split.read_image(example.pop("index"))
            image = self._preprocess(image, example.pop("augment_seed", None))
            return {"image": image, **example}

        stream = (
            tf.data.Dataset.from_tensor_slices(columns)
            .map(read_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(local_batch)
            .prefetch(tf.data.AUTOTUNE)
        )
        return _batches_naming_unreadable(
            stream.as_numpy_iterator(), num_batches, indices, split
        )


def _batches_naming_unreadable(
    numpy_batches: Iterator[Batch], num_batches: int, indices: np.ndarray, split: Split
) -> Iterator[Batch]:
    # A decode error inside tf.data names no file; the indices of the batch
    # that failed and those after it let the source find which one it was.
    for batch_number in range(num_batches):
        try:
            batch = next(numpy_batches)
        except tf.errors.OpError:
            unreadable = (
                split.find_unreadable(indices[batch_number:].reshape(-1))
                if split.find_unreadable
                else None
            )
            if unreadable is None:
                raise
            raise unreadable from None
        yield batch


def _check_positive_batch_size(global_batch_size: int) -> None:
    if global_batch_size < 1:
        raise UserError(
            f"global batch size {global_batch_size} must be at least 1; raise the batch size"
        )


def _check_processes(global_batch_size: int, process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index {process_index} is outside [0, {process_count})"
        )
    if global_batch_size % process_count:
        raise UserError(
            f"global batch size {global_batch_size} does not split evenly over "
            f"{process_count} processes; make it a multiple of {process_count}"
        )
