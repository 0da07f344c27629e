"""Images on disk, one sub-folder per class, under root/train and root/test.

The layout and class order follow torchvision's ImageFolder: classes are the
train/ sub-folders sorted by name, and test/ uses the same mapping (it may
lack classes, never add them). Files are checked when listed, cheaply, by
their first bytes; a file whose body is damaged only shows up when decoded,
and the error then names it too.
"""

import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from fmjax.data.pipeline import Split, uint8_to_unit_range
from fmjax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# tf.io.decode_image tells formats apart by these leading bytes.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
_HEADER_BYTES = 32


def image_folder_splits(root: str) -> tuple[list[str], Split, Split]:
    """Class names and the (train, test) splits of the image folder at `root`."""
    root_dir = Path(root)
    if not root_dir.is_dir():
        raise UserError(
            f"image folder {root_dir} does not exist; "
            "set config.data.root to a folder holding train/ and test/"
        )
    train_dir, test_dir = root_dir / "train", root_dir / "test"
    for split_dir in (train_dir, test_dir):
        if not split_dir.is_dir():
            raise UserError(
                f"{split_dir} is missing; create it with one sub-folder of images per class"
            )
    class_names = _visible_subfolders(train_dir)
    for name in _visible_subfolders(test_dir):
        if name not in class_names:
            raise UserError(
                f"class folder {test_dir / name} has no counterpart in {train_dir}; "
                "add training images for that class or remove the folder"
            )
    return (
        class_names,
        _folder_split(train_dir, class_names, every_class_needed=True),
        _folder_split(test_dir, class_names, every_class_needed=False),
    )


def _visible_subfolders(directory: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _folder_split(split_dir: Path, class_names: list[str], every_class_needed: bool) -> Split:
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_paths = _image_paths(split_dir / name)
        if every_class_needed and not class_paths:
            raise UserError(
                f"class folder {split_dir / name} holds no images; add some or remove it"
            )
        paths += class_paths
        labels += [label] * len(class_paths)
    if not paths:
        raise UserError(
            f"{split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "put them in one sub-folder per class"
        )
    for path in paths:
        _check_header(path)
    paths_tensor = tf.constant(paths)

    def read_image(index: tf.Tensor) -> tf.Tensor:
        return uint8_to_unit_range(_decode(tf.io.read_file(tf.gather(paths_tensor, index))))

    def find_unreadable(indices: np.ndarray) -> UserError | None:
        for index in indices:
            try:
                _decode(tf.io.read_file(paths[index]))
            except tf.errors.OpError:
                return UserError(
                    f"image {paths[index]} cannot be decoded (damaged or truncated); "
                    "replace or delete it"
                )
        return None

    return Split(np.asarray(labels, np.int32), read_image, find_unreadable)


def _image_paths(class_dir: Path) -> list[str]:
    """Image files under class_dir, recursively, in sorted order; hidden ones skipped."""
    if not class_dir.is_dir():
        return []
    paths = []
    for directory, subdirectories, file_names in os.walk(class_dir, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        paths += [
            os.path.join(directory, file_name)
            for file_name in sorted(file_names)
            if not file_name.startswith(".")
            and file_name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return paths


def _check_header(path: str) -> None:
    try:
        with open(path, "rb") as image_file:
            header = image_file.read(_HEADER_BYTES)
    except OSError as error:
        raise UserError(
            f"cannot read image {path} ({error.strerror}); fix its permissions or delete it"
        ) from None
    if not header.startswith(_IMAGE_SIGNATURES):
        raise UserError(
            f"{path} is not a JPEG, PNG, GIF or BMP image; replace or delete it"
        )
    if header.startswith(b"BM") and _is_palette_bmp_tensorflow_misreads(path, header):
        raise UserError(
            f"{path} is a colour-palette BMP, which TensorFlow decodes with wrong "
            "colours; convert it to PNG"
        )


def _is_palette_bmp_tensorflow_misreads(path: str, header: bytes) -> bool:
    # TensorFlow takes an 8-bit BMP's palette indices as grey levels, which is
    # right only when the palette is the plain grey ramp (PIL then opens it
    # as mode "L"); BMPs of fewer bits it cannot read at all.
    info_header_size = int.from_bytes(header[14:18], "little")
    bits_offset = 24 if info_header_size == 12 else 28
    bits_per_pixel = int.from_bytes(header[bits_offset : bits_offset + 2], "little")
    if bits_per_pixel > 8:
        return False
    try:
        with Image.open(path) as image:
            return bits_per_pixel < 8 or image.mode != "L"
    except OSError:
        return True


def _decode(encoded: tf.Tensor) -> tf.Tensor:
    # channels=3 turns grey and RGBA into RGB; a GIF gives its first frame.
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])
