"""The input pipeline on a folder of JPEGs: fmjax's streamed one against the seed's PIL loader.

fmjax's is PIL in threads, as with data.cache="none"; the seed's is what
torchvision's ImageFolder and a 2-worker DataLoader amount to: PIL in a pool
of worker processes.
"""

import functools
import itertools
import multiprocessing
import multiprocessing.pool
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from benchmarks.timing import time_interleaved
from fmjax.config import base_config
from fmjax.data import load_dataset

PIL_POOL_WORKERS = 2  # the seed's loader as DataLoader(num_workers=2) would run it
# JPEG sizes a photo folder typically holds, (width, height) in pixels.
JPEG_SIZES = ((320, 240), (500, 375), (640, 480), (256, 256))


def write_jpeg_folder(root: str, num_train: int, num_test: int, num_classes: int, seed: int = 0) -> None:
    """Writes root/{train,test}/class_<k>/<i>.jpg, photo-sized and smooth like photos.

    Sizes cycle through JPEG_SIZES; each image is coarse noise scaled up, so it
    compresses and decodes like a photograph rather than like white noise.
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("test", num_test)):
        for i in range(count):
            class_dir = Path(root, split, f"class_{i % num_classes}")
            class_dir.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize(JPEG_SIZES[i % len(JPEG_SIZES)], Image.BILINEAR)
            image.save(class_dir / f"{i}.jpg", quality=90)


def fmjax_pipeline_epoch(
    root: str, image_size: int, batch_size: int
) -> tuple[Callable[[], None], int]:
    """One epoch of fmjax's streamed pipeline (data.cache="none") over an image folder's train split, ready to time.

    Returns:
      (call, images): call reads the next epoch's batches; images is how
      many one epoch holds.
    """
    config = base_config()
    config.data.source = "image_folder"
    config.data.root = root
    config.image_size = image_size
    dataset = load_dataset(config)
    epochs = itertools.count()

    def call():
        for _ in dataset.train_batches(next(epochs), batch_size):
            pass

    return call, dataset.steps_per_epoch(batch_size) * batch_size


def pil_batch(paths: Sequence[str], image_size: int) -> np.ndarray:
    """What ImageFolder with Resize and ToTensor gives for `paths`, stacked: float32 [B, 3, H, W] in [0, 1]."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        images.append(np.asarray(resized, np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(images)


def pil_pool_epoch(
    root: str, image_size: int, batch_size: int, pool: multiprocessing.pool.Pool
) -> tuple[Callable[[], None], int]:
    """One epoch of the seed's loader, PIL in a pool of worker processes, over root/train.

    As DataLoader(num_workers=2, persistent_workers=True) does, each worker
    builds whole shuffled batches, which come back in order.

    Returns:
      (call, images), as fmjax_pipeline_epoch.
    """
    paths = sorted(str(path) for path in Path(root, "train").glob("*/*.jpg"))
    images = len(paths) // batch_size * batch_size
    rng = np.random.default_rng(0)
    load = functools.partial(pil_batch, image_size=image_size)

    def call():
        order = rng.permutation(len(paths))[:images].reshape(-1, batch_size)
        for _ in pool.imap(load, [[paths[i] for i in chunk] for chunk in order]):
            pass

    return call, images


def pipeline_results(
    root: str, image_size: int, batch_size: int, warmup: int, repeats: int
) -> list[dict[str, Any]]:
    """fmjax's streamed pipeline and the PIL pool, whole epochs over root/train timed in turns.

    Returns:
      [fmjax's, the PIL pool's], each {"loader", "images", "timing", "images_per_s"}.
    """
    # The pool's workers come from a clean server process: forking this one,
    # which runs XLA's threads, could deadlock them.
    context = multiprocessing.get_context("forkserver")
    # The server imports this module once; each worker then starts without importing it.
    context.set_forkserver_preload([__name__])
    with context.Pool(PIL_POOL_WORKERS) as pool:
        loaders = {
            "fmjax streamed": fmjax_pipeline_epoch(root, image_size, batch_size),
            f"PIL pool ({PIL_POOL_WORKERS} processes)": pil_pool_epoch(root, image_size, batch_size, pool),
        }
        timings = time_interleaved({name: call for name, (call, _) in loaders.items()}, warmup, repeats)
    return [
        {
            "loader": name,
            "images": images,
            "timing": timings[name].as_dict(),
            "images_per_s": images / timings[name].median_s,
        }
        for name, (_, images) in loaders.items()
    ]
