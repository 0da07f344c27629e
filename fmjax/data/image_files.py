"""Image files as pixels: which files are images, their bit depth, decoding and resizing.

Images are decoded and resized as torchvision's ImageFolder and Resize do
it, with PIL: JPEGs with libjpeg's accurate DCT, CMYK and palette images
converted to RGB by PIL, the first frame of a GIF, and PIL's bilinear resize
to uint8. 16-bit PNGs keep their range as float32 in [0, 1]: grey ones
through PIL, colour ones (which PIL cuts to 8 bits) through TensorFlow,
imported only when a folder holds one.

A file is checked when listed by its first bytes; a damaged body only shows
when decoded, and the error then names the file too.
"""

import concurrent.futures
import os
import stat
from typing import Sequence

import numpy as np
from PIL import Image

from fmjax.data.resize import resize_image
from fmjax.data.split import Split
from fmjax.data.tensorflow_import import import_tensorflow
from fmjax.errors import UserError

# torchvision's ImageFolder's extensions, and .gif.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IMAGE_KINDS = "a JPEG, PNG, GIF, BMP, PPM, PGM, TIFF or WebP image"
_HEADER_BYTES = 32
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
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# PIL releases the GIL while it decodes and resizes, so threads decode in parallel.
_DECODERS = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1)


def image_files_split(paths: Sequence[str], image_size: int) -> Split:
    """A split that loads the image files `paths` by index exactly as training does (labels 0).

    Raises:
      UserError: naming the first file that is not an image fmjax reads
        (IMAGE_KINDS) or cannot be read.
    """
    problems, high_depth = zip(*map(inspect_image, paths)) if paths else ((), ())
    if any(problems):
        raise UserError(next(p for p in problems if p))
    return decoding_split(list(paths), [0] * len(paths), list(high_depth), image_size, "")


def decoding_split(
    paths: list[str], labels: list[int], high_depth: list[bool], image_size: int, advice: str
) -> Split:
    """A Split decoding each path when loaded; a damaged file is named by its path, then `advice`.

    Pixels are uint8, or float32 in [0, 1] for all when any image is high_depth.
    """
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


def inspect_image(path: str) -> tuple[str, bool]:
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


def undecodable_images(paths: list[str], high_depth: list[bool]) -> list[int]:
    """The positions in `paths` of the images that fail to decode, found by decoding each once."""

    def fails(path: str, deep: bool) -> bool:
        try:
            _load_image(path, 1, deep)
        except _DECODE_ERRORS:
            return True
        return False

    return [i for i, failed in enumerate(_DECODERS.map(fails, paths, high_depth)) if failed]


def _is_regular_file(path: str) -> bool:
    # A FIFO named like an image would block the first read forever.
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # named as unreadable when opened


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
