"""Images on disk, one sub-folder per class, under root/train and root/test.

The layout and class order follow torchvision's ImageFolder: classes are the
train/ sub-folders sorted by name, and test/ uses the same mapping (it may
lack classes, never add them). Real folders are messy, so:

- hidden files (.DS_Store, ._name), files without an image extension that
  torchvision's ImageFolder reads (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff
  .webp, and .gif; any case), and entries that are not regular files
  (a FIFO, a socket) are left out, and counted in one line;
- folders are walked following symbolic links, but each real folder once,
  under the class whose folder holds it, and each real file once: a link back
  up the tree, or to another class's folder, adds nothing (and is counted);
- an image that cannot be read is an error naming it, or, with
  on_bad_image="skip", is left out and named at the start. Files are checked
  when listed by their first bytes; with "skip" every image is also decoded
  once, since a damaged body only shows when decoded (with "error" that
  happens when the image is first loaded, and the error names the file too);
- a train/ class folder left with no image is an error: dropping the class
  would shift the labels of the classes after it.

Images are decoded and resized as torchvision's ImageFolder and Resize do
it, with PIL: JPEGs with libjpeg's accurate DCT, CMYK and palette images
converted to RGB by PIL, the first frame of a GIF, and PIL's bilinear resize
to uint8. 16-bit PNGs keep their range as float32 in [0, 1]: grey ones
through PIL, colour ones (which PIL cuts to 8 bits) through TensorFlow,
imported only when a folder holds one.
"""

import concurrent.futures
import os
import stat
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from fmjax.data.resize import resize_image
from fmjax.data.split import Split
from fmjax.data.tensorflow_import import import_tensorflow
from fmjax.errors import UserError

# torchvision's ImageFolder's extensions, and .gif.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IMAGE_KINDS = "a JPEG, PNG, GIF, BMP, PPM, PGM, TIFF or WebP image"
BAD_IMAGE_CHOICES = ("error", "skip")
_HEADER_BYTES = 32
_MAX_NAMED = 10  # skipped images named in the start-up line; the rest are counted
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIGNATURES = (
    _PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
    b"P2", b"P3", b"P5", b"P6",  # PGM and PPM, ASCII and binary
    b"II*\x00", b"MM\x00*",  # TIFF, little- and big-endian
)
# Formats that may hold more than 8 bits per channel, besides PNG: TIFF, PGM and PPM.
_MAYBE_HIGH_DEPTH_SIGNATURES = (b"II*\x00", b"MM\x00*", b"P2", b"P3", b"P5", b"P6")
# PIL modes of more than 8 bits per channel, kept as float32.
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
# PIL releases the GIL while it decodes and resizes, so threads decode in parallel.
_DECODERS = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1)


def image_folder_splits(
    root: str, image_size: int, on_bad_image: str, report: Callable[[str], None]
) -> tuple[list[str], Split, Split]:
    """Class names and the (train, test) splits of the image folder at `root`.

    Args:
      root: the folder holding train/ and test/.
      image_size: images load resized to image_size x image_size.
      on_bad_image: "error" or "skip", for images that cannot be read.
      report: prints one line; told what was left out of each split.
    """
    if on_bad_image not in BAD_IMAGE_CHOICES:
        raise UserError(
            f"config.data.on_bad_image is {on_bad_image!r}; use one of {', '.join(BAD_IMAGE_CHOICES)}"
        )
    if not root:
        raise UserError(
            "config.data.root is empty; set it to a folder holding train/ and test/"
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
                f"{split_dir} is missing (config.data.root={root}); "
                "create it with one sub-folder of images per class"
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
        _folder_split(train_dir, class_names, True, image_size, on_bad_image, report),
        _folder_split(test_dir, class_names, False, image_size, on_bad_image, report),
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
    image_size: int,
    on_bad_image: str,
    report: Callable[[str], None],
) -> Split:
    paths, labels = [], []
    left_out: dict[str, list[str]] = {
        "hidden file": [], "non-image file": [], "non-regular file": [], "repeated folder link": []
    }
    # A link inside a class folder to another class's folder, or up the tree,
    # would relabel other classes' images: every real folder is walked once,
    # under the class whose folder holds it.
    walked = {os.path.realpath(split_dir)} | {
        os.path.realpath(split_dir / name) for name in class_names if (split_dir / name).is_dir()
    }
    for label, name in enumerate(class_names):
        images, class_left_out = _list_class(split_dir / name, walked)
        paths += images
        labels += [label] * len(images)
        for kind, files in class_left_out.items():
            left_out[kind] += files
    counts = [_counted(files, kind, split_dir) for kind, files in left_out.items() if files]
    if counts:
        report(f"{split_dir}: left out {' and '.join(counts)}")
    skipped = left_out["non-image file"]
    if len(skipped) > len(paths):
        # Most of the folder is left out: photos in a format fmjax does not
        # read would otherwise train on nothing, or on a part, quietly.
        by_extension: dict[str, int] = {}
        for path in skipped:
            extension = os.path.splitext(path)[1].lower() or "(no extension)"
            by_extension[extension] = by_extension.get(extension, 0) + 1
        listed = ", ".join(
            f"{count} {extension}" for extension, count in sorted(by_extension.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        report(
            f"warning: {split_dir}: most files are left out ({listed}) and {len(paths)} images kept; "
            f"fmjax reads {' '.join(IMAGE_EXTENSIONS)}"
        )

    problems, high_depth = zip(*map(_inspect, paths)) if paths else ((), ())
    if any(problems) and on_bad_image == "error":
        raise UserError(f"{next(p for p in problems if p)} (or set config.data.on_bad_image=skip)")
    keep = [i for i, problem in enumerate(problems) if not problem]
    if on_bad_image == "skip":
        undecodable = set(_undecodable([paths[i] for i in keep], [high_depth[i] for i in keep]))
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
    high_depth = [high_depth[i] for i in keep]

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
    return _decoding_split(paths, labels, high_depth, image_size, "(or set config.data.on_bad_image=skip)")


def image_files_split(paths: Sequence[str], image_size: int) -> Split:
    """A split that loads the image files `paths` by index exactly as training does (labels 0).

    Raises:
      UserError: naming the first file that is not an image fmjax reads
        (IMAGE_KINDS) or cannot be read.
    """
    problems, high_depth = zip(*map(_inspect, paths)) if paths else ((), ())
    if any(problems):
        raise UserError(next(p for p in problems if p))
    return _decoding_split(list(paths), [0] * len(paths), list(high_depth), image_size, "")


def _decoding_split(
    paths: list[str], labels: list[int], high_depth: list[bool], image_size: int, advice: str
) -> Split:
    """A Split decoding each path when loaded; a damaged file is named by its path."""
    pixel_dtype = np.dtype(np.float32 if any(high_depth) else np.uint8)

    def load_one(index: int) -> np.ndarray:
        try:
            pixels = _load_image(paths[index], image_size, high_depth[index])
        except _DECODE_ERRORS:
            raise UserError(
                f"image {paths[index]} cannot be decoded (damaged or truncated); replace or "
                f"delete it {advice}".rstrip()
            ) from None
        return pixels.astype(np.float32) / 255.0 if pixels.dtype != pixel_dtype else pixels

    def load(indices: np.ndarray) -> np.ndarray:
        images = list(_DECODERS.map(load_one, np.asarray(indices).reshape(-1).tolist()))
        if not images:
            return np.zeros((0, image_size, image_size, 3), pixel_dtype)
        return np.stack(images)

    return Split(np.asarray(labels, np.int32), load, pixel_dtype)


def _list_class(class_dir: Path, walked: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The image files under class_dir, recursively and sorted, and what was left out, by kind.

    Links are followed, but each real folder is walked once: a link to a
    folder in `walked` (the split's folder, every class folder, and those
    walked already; this adds the ones it walks) adds nothing, so a loop or a
    link to another class cannot relabel images. A file reached by two names
    is listed once. Hidden sub-folders are skipped whole.
    """
    left_out: dict[str, list[str]] = {
        "hidden file": [], "non-image file": [], "non-regular file": [], "repeated folder link": []
    }
    if not class_dir.is_dir():
        return [], left_out
    images, seen_files = [], set()
    for directory, subdirectories, file_names in os.walk(class_dir, followlinks=True):
        kept = []
        for name in sorted(d for d in subdirectories if not d.startswith(".")):
            real = os.path.realpath(os.path.join(directory, name))
            if real in walked:
                left_out["repeated folder link"].append(os.path.join(directory, name))
            else:
                walked.add(real)
                kept.append(name)
        subdirectories[:] = kept
        for file_name in sorted(file_names):
            path = os.path.join(directory, file_name)
            if file_name.startswith("."):
                left_out["hidden file"].append(path)
            elif not file_name.lower().endswith(IMAGE_EXTENSIONS):
                left_out["non-image file"].append(path)
            elif not _is_regular_file(path):
                left_out["non-regular file"].append(path)
            elif os.path.realpath(path) not in seen_files:
                seen_files.add(os.path.realpath(path))
                images.append(path)
    return images, left_out


def _is_regular_file(path: str) -> bool:
    # A FIFO named like an image would block the first read forever.
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # named as unreadable by _inspect


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def _counted(paths: list[str], noun: str, split_dir: Path) -> str:
    """E.g. "2 hidden files (cat/.DS_Store, ...)"."""
    example = os.path.relpath(paths[0], split_dir)
    return f"{_plural(len(paths), noun)} ({example}{', ...' * (len(paths) > 1)})"


def _inspect(path: str) -> tuple[str, bool]:
    """Why a file cannot be read as an image ("" if it can), and whether it holds more than 8 bits per channel.

    Both from its first bytes: a PNG's IHDR gives its bit depth (byte 24);
    TIFF and PGM/PPM, the formats that can hold 16-bit or float pixels beside
    PNG, are asked of PIL, which reads their header only.
    """
    if not _is_regular_file(path):
        return f"{path} is not a regular file; replace it with an image or delete it", False
    try:
        with open(path, "rb") as image_file:
            header = image_file.read(_HEADER_BYTES)
    except OSError as error:
        return f"cannot read image {path} ({error.strerror}); fix its permissions or delete it", False
    webp = header.startswith(b"RIFF") and header[8:12] == b"WEBP"
    if not (header.startswith(_SIGNATURES) or webp):
        return f"{path} is not {IMAGE_KINDS}; replace or delete it", False
    if header.startswith(_PNG_SIGNATURE):
        return "", len(header) > 24 and header[24] == 16
    if header.startswith(_MAYBE_HIGH_DEPTH_SIGNATURES):
        try:
            with Image.open(path) as image:
                return "", image.mode in _HIGH_DEPTH_MODES
        except _DECODE_ERRORS:
            return "", False  # named when decoded
    return "", False


def _undecodable(paths: list[str], high_depth: list[bool]) -> list[int]:
    """The positions in `paths` of the images that fail to decode, found by decoding each once."""

    def fails(path: str, deep: bool) -> bool:
        try:
            _load_image(path, 1, deep)
        except _DECODE_ERRORS:
            return True
        return False

    return [i for i, failed in enumerate(_DECODERS.map(fails, paths, high_depth)) if failed]


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _load_image(path: str, image_size: int, high_depth: bool) -> np.ndarray:
    """Pixels [image_size, image_size, 3]: uint8, or float32 in [0, 1] for a high-depth image."""
    if high_depth:
        return resize_image(_high_depth_pixels(path), image_size)
    with Image.open(path) as image:
        image.seek(0)  # a GIF's (or TIFF's) first frame
        rgb = np.asarray(image.convert("RGB"))
    return resize_image(rgb, image_size)


def _high_depth_pixels(path: str) -> np.ndarray:
    """float32 [h, w, c] in [0, 1] from a 16-bit image (or a float TIFF, taken as [0, 1])."""
    with Image.open(path) as image:
        if image.mode in _HIGH_DEPTH_MODES:  # one channel, which PIL keeps whole
            scale = 1.0 if image.mode == "F" else 65535.0
            return (np.asarray(image, np.float32) / np.float32(scale))[..., None]
    tf = import_tensorflow()  # a 16-bit colour PNG, which PIL cuts to 8 bits
    with open(path, "rb") as image_file:
        encoded = image_file.read()
    try:
        decoded = tf.io.decode_png(encoded, channels=3, dtype=tf.uint16).numpy()
    except tf.errors.OpError as error:
        raise OSError(str(error)) from None
    return decoded.astype(np.float32) / np.float32(65535)
