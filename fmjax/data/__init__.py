"""The input pipeline: a Dataset from a config, batches from a Dataset."""

import functools
from typing import Callable, Optional

import ml_collections

from fmjax.data.dataset import Dataset
from fmjax.data.digits import digits_splits
from fmjax.data.image_folder import image_folder_splits
from fmjax.data.prepared import PreparedStore
from fmjax.data.preprocess import Augmentation, prepare_batch
from fmjax.data.tfds import tfds_splits
from fmjax.errors import UserError

__all__ = ["Augmentation", "Dataset", "cache_placement", "load_dataset"]

SOURCES = ("digits", "image_folder", "tfds")
CACHE_CHOICES = ("auto", "device", "host", "none")


def cache_placement(config: ml_collections.ConfigDict, dataset: Dataset) -> str:
    """Where the run keeps its pixels: "device", "host" or "none" (loaded batch by batch).

    config.data.cache names one, or "auto": the devices when both splits'
    pixels fit config.data.device_cache_mb (each device holds a whole copy),
    else host memory when they fit config.data.host_cache_mb, else none.
    """
    choice = config.data.cache
    if choice not in CACHE_CHOICES:
        raise UserError(
            f"config.data.cache is {choice!r}; use one of {', '.join(CACHE_CHOICES)}"
        )
    if choice != "auto":
        return choice
    size_mb = dataset.pixel_bytes() / 2**20
    if size_mb <= config.data.device_cache_mb:
        return "device"
    if size_mb <= config.data.host_cache_mb:
        return "host"
    return "none"


def load_dataset(
    config: ml_collections.ConfigDict, report: Callable[[str], None] = print
) -> Dataset:
    """Builds the data set that config.data.source names: "digits", "image_folder" or "tfds".

    `report` prints a line about the data that the user should see (what an
    image folder's listing left out).

    Config fields read (the config files give every one a value; none has a
    default here):
      seed: int, decides each epoch's training order with the epoch number.
      image_size: int, images are resized to image_size x image_size pixels.
      num_classes: int, used only when the data does not name its classes
        (a TFDS label that is not a ClassLabel).
      data.source: "digits", "image_folder" or "tfds".
      data.root: str, image_folder only: the folder holding train/ and test/.
      data.name: str, tfds only: the TFDS name, e.g. "mnist".
      data.data_dir: str, tfds only: where it was prepared; "" for the TFDS default.
      data.test_fraction: float in (0, 1), digits only: share held out for testing.
      data.split_seed: int, digits only: fixes which images are held out.
      data.normalize: bool, whether to map pixels from [0, 1] to
        (x - data.mean) / data.std per channel.
      data.mean, data.std: 3 floats each, per RGB channel.
      data.random_crop_padding: int, training only: pixels of border added
        before a random crop back to image_size; 0 for none.
      data.horizontal_flip: bool, training only: mirror half the images.
      data.on_bad_image: "error" or "skip", image_folder only: what an image
        that cannot be read does.
      data.prepared_dir: str, where digits and image folders keep their
        prepared data between runs (fmjax.data.prepared); "" for nowhere.
        A config.json older than the key has none: "" then.
    """
    source = config.data.source
    store = _prepared_store(config, report)
    if source == "digits":
        name = "digits"
        class_names, train_split, test_split = digits_splits(
            config.data.test_fraction, config.data.split_seed, config.image_size, store
        )
    elif source == "image_folder":
        name = config.data.root
        # Streamed batches ("none") decode as they go; nothing is prepared for them.
        class_names, train_split, test_split = image_folder_splits(
            config.data.root,
            config.image_size,
            config.data.on_bad_image,
            report,
            store if config.data.cache != "none" else None,
        )
    elif source == "tfds":
        name = config.data.name
        class_names, train_split, test_split = tfds_splits(
            config.data.name, config.data.data_dir, config.num_classes, config.image_size
        )
    else:
        raise UserError(
            f"unknown data source {source!r}; set config.data.source to one of {', '.join(SOURCES)}"
        )
    pixel_mean, pixel_std = _normalization(config)
    return Dataset(
        name=name,
        class_names=class_names,
        image_shape=(config.image_size, config.image_size, 3),
        seed=config.seed,
        train_split=train_split,
        test_split=test_split,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        augmentation=_augmentation(config),
    )


def _prepared_store(config: ml_collections.ConfigDict, report: Callable[[str], None]) -> Optional[PreparedStore]:
    folder = config.data.get("prepared_dir", "")
    return PreparedStore(folder, report) if folder else None


def _augmentation(config: ml_collections.ConfigDict) -> Augmentation:
    padding = config.data.random_crop_padding
    if padding < 0:
        raise UserError(
            f"config.data.random_crop_padding is {padding}; use 0 (off) or a positive number of pixels"
        )
    return Augmentation(random_crop_padding=padding, horizontal_flip=config.data.horizontal_flip)


def _normalization(
    config: ml_collections.ConfigDict,
) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None]:
    """(mean, std) per channel when config.data.normalize asks for them, else (None, None)."""
    if not config.data.normalize:
        return None, None
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError(
            f"config.data.mean {mean} and config.data.std {std} must be 3 numbers each, "
            "std positive; give one value per RGB channel"
        )
    return tuple(map(float, mean)), tuple(map(float, std))


def prepare_fn(config: ml_collections.ConfigDict) -> Callable[..., dict]:
    """The preprocessing `config` asks for, without any data: (pixel batch, epoch=None) -> the model's input.

    The same function as the loaded data set's `prepare`; the dry runs compile it into the step.
    """
    pixel_mean, pixel_std = _normalization(config)
    return functools.partial(
        prepare_batch, seed=config.seed, augmentation=_augmentation(config), pixel_mean=pixel_mean, pixel_std=pixel_std
    )

