"""Images on disk, one sub-folder per class, under root/train and root/test.

The layout and class order follow torchvision's ImageFolder: classes are the
train/ sub-folders sorted by name, and test/ uses the same mapping (it may
lack classes, never add them). Real folders are messy, so:

- hidden files (.DS_Store, ._name) and files that are not JPEG, PNG, GIF or
  BMP by their extension (any case) are left out, and counted in one line;
- an image that cannot be read is an error naming it, or, with
  on_bad_image="skip", is left out and named at the start. Files are checked
  when listed by their first bytes; with "skip" every image is also decoded
  once, since a damaged body only shows when decoded (with "error" that
  happens in training, and the error names the file too);
- a train/ class folder left with no image is an error: dropping the class
  would shift the labels of the classes after it.

Decoding is exact: JPEGs with the accurate DCT that PIL (and so torchvision)
uses, CMYK ones converted to RGB; PNGs at 16 bits, so a 16-bit PNG keeps its
range and an 8-bit one gives exactly v / 255.
"""

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from fmjax.data.pipeline import Split, uint8_to_unit_range
from fmjax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
BAD_IMAGE_CHOICES = ("error", "skip")
_HEADER_BYTES = 32
_MAX_NAMED = 10  # skipped images named in the start-up line; the rest are counted

# Decoders, told apart by a file's leading bytes as tf.io.decode_image does.
_PNG, _JPEG, _GIF_OR_BMP = 0, 1, 2
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": _PNG,
    b"\xff\xd8\xff": _JPEG,
    b"GIF87a": _GIF_OR_BMP,
    b"GIF89a": _GIF_OR_BMP,
    b"BM": _GIF_OR_BMP,
}


def image_folder_splits(
    root: str, on_bad_image: str, report: Callable[[str], None]
) -> tuple[list[str], Split, Split]:
    """Class names and the (train, test) splits of the image folder at `root`.

    Args:
      root: the folder holding train/ and test/.
      on_bad_image: "error" or "skip", for images that cannot be read.
      report: prints one line; told what was left out of each split.
    """
    if on_bad_image not in BAD_IMAGE_CHOICES:
        raise UserError(
            f"config.data.on_bad_image is {on_bad_image!r}; use one of {', '.join(BAD_IMAGE_CHOICES)}"
        )
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
        _folder_split(train_dir, class_names, True, on_bad_image, report),
        _folder_split(test_dir, class_names, False, on_bad_image, report),
    )


def _visible_subfolders(directory: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _folder_split(
    split_dir: Path,
    class_names: list[str],
    every_class_needed: bool,
    on_bad_image: str,
    report: Callable[[str], None],
) -> Split:
    paths, labels, hidden, not_images = [], [], [], []
    for label, name in enumerate(class_names):
        images, class_hidden, class_not_images = _list_class(split_dir / name)
        paths += images
        labels += [label] * len(images)
        hidden += class_hidden
        not_images += class_not_images
    left_out = [
        _counted(files, kind, split_dir)
        for files, kind in ((hidden, "hidden file"), (not_images, "non-image file"))
        if files
    ]
    if left_out:
        report(f"{split_dir}: left out {' and '.join(left_out)}")

    inspected = [_inspect(path) for path in paths]
    problems = [problem for _, problem in inspected if problem]
    if problems and on_bad_image == "error":
        raise UserError(f"{problems[0]} (or set config.data.on_bad_image=skip)")
    decoders = [decoder for decoder, _ in inspected]
    keep = [i for i, (_, problem) in enumerate(inspected) if not problem]
    if on_bad_image == "skip":
        undecodable = set(_undecodable([paths[i] for i in keep], [decoders[i] for i in keep]))
        keep = [i for position, i in enumerate(keep) if position not in undecodable]
        skipped = sorted(set(range(len(paths))) - set(keep))
        if skipped:
            named = [os.path.relpath(paths[i], split_dir) for i in skipped]
            more = f" and {len(named) - _MAX_NAMED} more" if len(named) > _MAX_NAMED else ""
            report(
                f"{split_dir}: skipped {_plural(len(named), 'unreadable image')}: "
                f"{', '.join(named[:_MAX_NAMED])}{more}"
            )
    paths = [paths[i] for i in keep]
    labels = [labels[i] for i in keep]
    decoders = [decoders[i] for i in keep]

    if every_class_needed:
        present = set(labels)
        for label, name in enumerate(class_names):
            if label not in present:
                raise UserError(
                    f"class folder {split_dir / name} holds no readable images; add some "
                    "or remove the folder (an empty class would shift the labels after it)"
                )
    if not paths:
        raise UserError(
            f"{split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "put them in one sub-folder per class"
        )
    return _decoding_split(
        paths, labels, decoders, "(or set config.data.on_bad_image=skip)"
    )


def image_files_split(paths: Sequence[str]) -> Split:
    """A split that reads the image files `paths` by index exactly as training does (labels 0).

    Raises:
      UserError: naming the first file that is not a JPEG, PNG, GIF or BMP
        image, cannot be read, or is a BMP that TensorFlow would misread.
    """
    inspected = [_inspect(path) for path in paths]
    problems = [problem for _, problem in inspected if problem]
    if problems:
        raise UserError(problems[0])
    decoders = [decoder for decoder, _ in inspected]
    return _decoding_split(list(paths), [0] * len(paths), decoders, "")


def _decoding_split(
    paths: list[str], labels: list[int], decoders: list[int], advice: str
) -> Split:
    """A Split decoding each path with its decoder; a damaged file is named by its path."""
    paths_tensor, decoders_tensor = tf.constant(paths), tf.constant(decoders, tf.int32)

    def read_image(index: tf.Tensor) -> tf.Tensor:
        encoded = tf.io.read_file(tf.gather(paths_tensor, index))
        return _decode(encoded, tf.gather(decoders_tensor, index))

    def find_unreadable(indices: np.ndarray) -> UserError | None:
        for index in indices:
            try:
                _decode(tf.io.read_file(paths[index]), tf.constant(decoders[index]))
            except tf.errors.OpError:
                return UserError(
                    f"image {paths[index]} cannot be decoded (damaged or truncated); replace or "
                    f"delete it {advice}".rstrip()
                )
        return None

    return Split(np.asarray(labels, np.int32), read_image, find_unreadable)


def _list_class(class_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """(image files, hidden files, other files) under class_dir, recursively, sorted.

    Hidden sub-folders are skipped whole.
    """
    if not class_dir.is_dir():
        return [], [], []
    images, hidden, others = [], [], []
    for directory, subdirectories, file_names in os.walk(class_dir, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for file_name in sorted(file_names):
            path = os.path.join(directory, file_name)
            if file_name.startswith("."):
                hidden.append(path)
            elif file_name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(path)
            else:
                others.append(path)
    return images, hidden, others


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def _counted(paths: list[str], noun: str, split_dir: Path) -> str:
    """E.g. "2 hidden files (cat/.DS_Store, ...)"."""
    example = os.path.relpath(paths[0], split_dir)
    return f"{_plural(len(paths), noun)} ({example}{', ...' * (len(paths) > 1)})"


def _inspect(path: str) -> tuple[int, str]:
    """The decoder a file needs, by its first bytes, and why it cannot be read ("" if it can)."""
    try:
        with open(path, "rb") as image_file:
            header = image_file.read(_HEADER_BYTES)
    except OSError as error:
        return _GIF_OR_BMP, f"cannot read image {path} ({error.strerror}); fix its permissions or delete it"
    decoder = next((d for signature, d in _SIGNATURES.items() if header.startswith(signature)), None)
    if decoder is None:
        return _GIF_OR_BMP, f"{path} is not a JPEG, PNG, GIF or BMP image; replace or delete it"
    if header.startswith(b"BM") and _is_palette_bmp_tensorflow_misreads(path, header):
        return decoder, (
            f"{path} is a colour-palette BMP, which TensorFlow decodes with wrong "
            "colours; convert it to PNG"
        )
    return decoder, ""


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


def _undecodable(paths: list[str], decoders: list[int]) -> list[int]:
    """The positions in `paths` of the images that fail to decode, found by decoding each once."""
    paths_tensor, decoders_tensor = tf.constant(paths, tf.string), tf.constant(decoders, tf.int32)

    def decoded_size(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = _decode(tf.io.read_file(tf.gather(paths_tensor, index)), tf.gather(decoders_tensor, index))
        return index, tf.size(image)  # the size makes tf.data run the decoder

    decoded = (
        tf.data.Dataset.range(len(paths))
        .map(decoded_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .ignore_errors()
    )
    readable = {int(index) for index, _ in decoded.as_numpy_iterator()}
    return [i for i in range(len(paths)) if i not in readable]


def _decode(encoded: tf.Tensor, decoder: tf.Tensor) -> tf.Tensor:
    """float32 [height, width, 3] pixels in [0, 1] from an encoded image."""
    return tf.ensure_shape(
        tf.switch_case(
            decoder,
            {
                _PNG: lambda: _decode_png(encoded),
                _JPEG: lambda: _decode_jpeg(encoded),
                _GIF_OR_BMP: lambda: _decode_gif_or_bmp(encoded),
            },
        ),
        [None, None, 3],
    )


def _decode_png(encoded: tf.Tensor) -> tf.Tensor:
    # At 16 bits an 8-bit PNG's value v comes back as v * 257, and
    # v * 257 / 65535 is exactly v / 255 in float32.
    image = tf.io.decode_png(encoded, channels=3, dtype=tf.uint16)
    return tf.cast(image, tf.float32) / 65535.0


def _decode_jpeg(encoded: tf.Tensor) -> tf.Tensor:
    # The default fast DCT is off by up to several levels from libjpeg's
    # accurate one, which PIL uses.
    return uint8_to_unit_range(
        tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
    )


def _decode_gif_or_bmp(encoded: tf.Tensor) -> tf.Tensor:
    # channels=3 turns grey and RGBA into RGB; a GIF gives its first frame.
    return uint8_to_unit_range(tf.io.decode_image(encoded, channels=3, expand_animations=False))
