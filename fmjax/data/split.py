"""A split: one source's examples, addressed by index, as pixels at the run's size.

A source supplies, per split, the labels and a function that loads images by
index, already at the run's size: "pixels", uint8 for 8-bit images (as the
seed's own Resize on a PIL image gives them) or float32 in [0, 1] otherwise.
"""

import dataclasses
from typing import Callable, Optional

import numpy as np

from fmjax.data.resize import resize_image


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a source, addressed by example index.

    Attributes:
      labels: int32 [num_examples], the class of each example.
      load: int indices [n] -> pixels [n, H, W, 3] at the run's size, of
        `pixel_dtype`; it raises a UserError naming an example it cannot read.
      pixel_dtype: uint8 (8-bit images) or float32 (values in [0, 1]).
      load_all: () -> every example's pixels, as `load` gives them, where the
        source has a faster way to the whole split (a copy prepared on disk,
        fmjax.data.prepared); None to load every index.
    """

    labels: np.ndarray
    load: Callable[[np.ndarray], np.ndarray]
    pixel_dtype: np.dtype
    load_all: Optional[Callable[[], np.ndarray]] = None

    @property
    def num_examples(self) -> int:
        return len(self.labels)


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


def whole_split(split: Split) -> np.ndarray:
    """Every example's pixels, [n, H, W, 3]: through load_all where the split has one."""
    return split.load_all() if split.load_all is not None else split.load(np.arange(split.num_examples))


def split_pixels(split: Split) -> dict[str, np.ndarray]:
    """A whole split in memory: {"image": pixels [n, H, W, 3], "label": int32 [n]}."""
    return {"image": whole_split(split), "label": split.labels}


def in_memory(split: Split) -> Split:
    """`split` loaded whole once, then served from memory."""
    return _served_from(whole_split(split), split.labels)


def _served_from(pixels: np.ndarray, labels: np.ndarray) -> Split:
    """A split over pixels already in memory, [num_examples, H, W, 3]."""
    return Split(
        labels=np.asarray(labels, np.int32),
        load=lambda indices: pixels[np.asarray(indices)],
        pixel_dtype=pixels.dtype,
    )
