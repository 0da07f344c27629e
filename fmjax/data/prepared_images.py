"""An image folder's split kept prepared on disk: its decoded, resized pixels and what its inspection found.

An entry is keyed by every listed file's path (relative to the split's
folder), label, size, modification and change times (ns), inode and device,
the class names, the image size, on_bad_image and the versions of the
decoders: changing, adding, removing or chmodding a file makes another key.
It holds the pixels and labels of the images kept, and the inspection's
findings (the images skipped as unreadable, the high-depth ones), so a later
run reads them instead of inspecting and decoding every file, and names the
same skipped images. Each split folder, image size and on_bad_image keeps
only its newest entry: an older listing is of no more use.

An entry is written when the whole split is first loaded into memory (data
on the devices or in host memory); streamed batches never write one.
"""

import dataclasses
import hashlib
import importlib.metadata
import json
import os
from typing import Optional

import numpy as np

from fmjax.data.prepared import Entry, PreparedStore, key_digest
from fmjax.data.split import Split

_PREPARED_VERSION = 1  # of what an image folder entry holds and how its pixels are decoded


@dataclasses.dataclass(frozen=True)
class PreparedListing:
    """Where a listed split's entry lives: the store, the entry's kind and key."""

    store: PreparedStore
    kind: str
    key: dict


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What inspecting a listing found, by position in the listing.

    Attributes:
      skipped: the positions of unreadable images left out (on_bad_image="skip").
      high_depth: one flag per listed path: more than 8 bits per channel.
      entry: the prepared entry these came from, None when inspected afresh.
    """

    skipped: list[int]
    high_depth: list[bool]
    entry: Optional[Entry] = None


def kept_positions(count: int, skipped: list[int]) -> list[int]:
    """The positions of a listing of `count` files that are not `skipped`, in order."""
    return sorted(set(range(count)) - set(skipped))


def listing_key(
    store: PreparedStore,
    split_dir: str,
    paths: list[str],
    labels: list[int],
    class_names: list[str],
    image_size: int,
    on_bad_image: str,
) -> PreparedListing:
    """The entry of a split listed as `paths` (with their `labels`) under `split_dir`."""
    files = hashlib.sha256()
    for path, label in zip(paths, labels):
        try:
            info = os.stat(path)
            # ctime changes with every write and chmod and cannot be set back, so a
            # file copied with its mtime kept, or made readable, is seen as changed.
            facts = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]
        except OSError:
            facts = None  # named as unreadable when inspected
        files.update(json.dumps([label, os.path.relpath(path, split_dir), facts]).encode() + b"\n")
    slot = {"folder": os.path.abspath(split_dir), "image_size": image_size, "on_bad_image": on_bad_image}
    key = {
        "version": _PREPARED_VERSION,
        "files": files.hexdigest(),
        "count": len(paths),
        "class_names": list(class_names),
        "image_size": image_size,
        "on_bad_image": on_bad_image,
        "decoders": _decoder_versions(),
    }
    return PreparedListing(store, f"folder-{key_digest(slot)}", key)


def _decoder_versions() -> dict[str, Optional[str]]:
    """The installed versions of what decodes and resizes the images (PIL; TensorFlow for 16-bit colour PNGs)."""
    versions = {}
    for package in ("pillow", "tensorflow", "tensorflow-cpu"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def prepared_inspection(listing: PreparedListing, labels: list[int]) -> Optional[Inspection]:
    """The inspection kept in the listing's entry, if one reads and fits the listing's labels; else None."""
    entry = listing.store.read(listing.kind, listing.key)
    if entry is None:
        return None
    skipped, high_depth = entry.facts.get("skipped"), entry.facts.get("high_depth")
    if not (_are_positions(skipped, len(labels)) and _are_positions(high_depth, len(labels))):
        return None
    kept = kept_positions(len(labels), skipped)
    if set(high_depth) & set(skipped) or "pixels" not in entry.arrays:
        return None
    stored_labels = entry.array("labels")
    expected_labels = np.asarray([labels[i] for i in kept], np.int32)
    if stored_labels is None or stored_labels.shape != expected_labels.shape:
        return None
    if not np.array_equal(stored_labels, expected_labels):
        return None
    image_size = listing.key["image_size"]
    pixels = entry.arrays["pixels"]
    dtype = np.float32 if high_depth else np.uint8
    if pixels.dtype != dtype or pixels.shape != (len(kept), image_size, image_size, 3):
        return None
    deep = set(high_depth)
    return Inspection(sorted(skipped), [i in deep for i in range(len(labels))], entry)


def with_prepared_pixels(split: Split, listing: PreparedListing, inspection: Inspection) -> Split:
    """`split`, whose load_all reads the entry's pixels, or decodes every image and writes the entry."""

    def load_all() -> np.ndarray:
        if inspection.entry is not None:
            pixels = inspection.entry.array("pixels")
            if pixels is not None and _are_pixels(pixels):
                return pixels
        pixels = split.load(np.arange(split.num_examples))
        skipped = set(inspection.skipped)
        facts = {
            "skipped": inspection.skipped,
            "high_depth": [i for i, deep in enumerate(inspection.high_depth) if deep and i not in skipped],
        }
        listing.store.write(
            listing.kind, listing.key, facts, {"labels": split.labels, "pixels": pixels}, keep_only_this=True
        )
        return pixels

    return dataclasses.replace(split, load_all=load_all)


def _are_positions(values: object, count: int) -> bool:
    """Whether `values` is a list of distinct positions in [0, count), in order."""
    return (
        isinstance(values, list)
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < count for v in values)
        and all(a < b for a, b in zip(values, values[1:]))
    )


def _are_pixels(pixels: np.ndarray) -> bool:
    """uint8, or float32 in [0, 1] (NaN fails)."""
    if pixels.dtype == np.uint8 or pixels.size == 0:
        return True
    return bool(np.all((pixels >= 0.0) & (pixels <= 1.0)))
