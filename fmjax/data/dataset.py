"""A Dataset: one source's two splits, with the batching and preprocessing every source shares.

Pixels reach the step in one of two ways, with the same values: batches
loaded on the host (`train_batches`, `test_batches`), or gathered on the
device from a whole split loaded once (fmjax.data.split.split_pixels), by the
same indices (`train_indices`, `test_indices`). Either way, `prepare` turns
them into the model's input inside the compiled step.
"""

import dataclasses
from typing import Any, Iterator, Optional

import jax.numpy as jnp
import numpy as np

from fmjax.data.batches import (
    Batch,
    check_batch_size,
    loaded_ahead,
    padded_batches,
    padded_test_indices,
    shuffled_train_indices,
)
from fmjax.data.preprocess import Augmentation, prepare_batch
from fmjax.data.split import Split
from fmjax.errors import UserError


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
        check_batch_size(global_batch_size)
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
        check_batch_size(global_batch_size, process_index, process_count)
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
        check_batch_size(global_batch_size, process_index, process_count)
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
        return loaded_ahead(self.train_split, indices, masks=None)

    def test_batches(
        self, global_batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> Iterator[Batch]:
        """This process's share of the test split, in order, padded and masked; see padded_batches."""
        return padded_batches(
            self.test_split,
            global_batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    def prepare(self, batch: dict, epoch: Optional[jnp.ndarray] = None, seed: Any = None) -> dict:
        """The model's input from a batch of pixels, as this data set's config says (see prepare_batch).

        `seed` (a population member's) replaces the data set's for the augmentation.
        """
        return prepare_batch(
            batch,
            epoch,
            seed=self.seed if seed is None else seed,
            augmentation=self.augmentation,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
        )

    def _check_train_batch_size(self, global_batch_size: int) -> None:
        check_batch_size(global_batch_size)
        if global_batch_size > self.num_train:
            raise UserError(
                f"global batch size {global_batch_size} is larger than the "
                f"{self.num_train} training examples of {self.name}; lower the batch size"
            )
