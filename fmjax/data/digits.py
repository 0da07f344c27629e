"""scikit-learn's 8x8 handwritten digits, split into train and test once.

The 1797 images ship inside scikit-learn, so this source needs no download;
it is the data set for quick runs and tests. Importing scikit-learn takes
most of a second, so with a PreparedStore the split (8x8 images, labels and
class names) is kept on disk, keyed by scikit-learn's installed version, the
test fraction and the split seed, and a later run reads it without importing
scikit-learn.
"""

import importlib.metadata
from typing import Optional

import numpy as np

from fmjax.data.prepared import PreparedStore
from fmjax.data.split import Split, array_split
from fmjax.errors import UserError

# load_digits counts ink in each 8x8 cell from 0 to 16.
_MAX_PIXEL_VALUE = 16.0
_KIND = "digits"
_PREPARED_VERSION = 1  # of what a digits entry holds; a change of it makes a new entry
_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def digits_splits(
    test_fraction: float, split_seed: int, image_size: int, store: Optional[PreparedStore] = None
) -> tuple[list[str], Split, Split]:
    """Class names and the (train, test) splits of the digits data set.

    Args:
      test_fraction: share of the images held out for testing, in (0, 1).
      split_seed: fixes which images are held out; stratified by label so both
        splits keep the classes' proportions.
      image_size: the images are resized to image_size x image_size once.
      store: where the split is kept between runs; None to compute it each time.
    """
    if not 0.0 < test_fraction < 1.0:
        raise UserError(
            f"digits test fraction {test_fraction} is outside (0, 1); "
            "set config.data.test_fraction to e.g. 0.25"
        )
    key = _prepared_key(test_fraction, split_seed) if store is not None else None
    prepared = _read_prepared(store, key) if key is not None else None
    class_names, arrays = prepared or _split_digits(test_fraction, split_seed)
    if key is not None and prepared is None and arrays["train_images"].dtype == np.uint8:
        store.write(_KIND, key, {"class_names": class_names}, arrays)
    return (
        class_names,
        array_split(_scaled(arrays["train_images"]), arrays["train_labels"], image_size),
        array_split(_scaled(arrays["test_images"]), arrays["test_labels"], image_size),
    )


def _split_digits(test_fraction: float, split_seed: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """Class names and the split as _ARRAYS: images [n, 8, 8] of counts of ink 0..16, labels int32 [n].

    The images are uint8 when every count is a whole number, as load_digits gives them.
    """
    # Imported here: scikit-learn takes a second to import, which runs on
    # other data sets, or with the split prepared, need not pay.
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    images = digits.images.astype(np.uint8)
    if not np.array_equal(images, digits.images):
        images = digits.images  # kept as they are, and not prepared
    train_images, test_images, train_labels, test_labels = train_test_split(
        images,
        digits.target,
        test_size=test_fraction,
        random_state=split_seed,
        stratify=digits.target,
    )
    class_names = [str(digit) for digit in digits.target_names]
    labels = (train_labels.astype(np.int32), test_labels.astype(np.int32))
    return class_names, dict(zip(_ARRAYS, (train_images, labels[0], test_images, labels[1])))


def _scaled(images: np.ndarray) -> np.ndarray:
    """float32 [n, 8, 8, 1] in [0, 1] from counts of ink, as load_digits' float64 images divide."""
    return (images.astype(np.float64) / _MAX_PIXEL_VALUE).astype(np.float32)[..., np.newaxis]


def _prepared_key(test_fraction: float, split_seed: int) -> Optional[dict]:
    """What the split depends on; None when scikit-learn's version cannot be read (no caching then)."""
    try:
        version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        return None
    return {"version": _PREPARED_VERSION, "scikit_learn": version, "test_fraction": float(test_fraction), "split_seed": int(split_seed)}


def _read_prepared(store: PreparedStore, key: dict) -> Optional[tuple[list[str], dict[str, np.ndarray]]]:
    """(class names, arrays) kept in `store` under `key`, if they read and are a digits split; else None."""
    entry = store.read(_KIND, key)
    if entry is None:
        return None
    class_names = entry.facts.get("class_names")
    arrays = {name: entry.array(name) for name in _ARRAYS}
    return (class_names, arrays) if _is_digits_split(class_names, arrays) else None


def _is_digits_split(class_names: object, arrays: dict[str, Optional[np.ndarray]]) -> bool:
    if not isinstance(class_names, list) or not class_names or not all(isinstance(n, str) for n in class_names):
        return False
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images is None or labels is None:
            return False
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (8, 8):
            return False
        if labels.dtype != np.int32 or labels.shape != images.shape[:1] or not len(labels):
            return False
        if images.max() > _MAX_PIXEL_VALUE or labels.min() < 0 or labels.max() >= len(class_names):
            return False
    return True
