"""Images on disk, one sub-folder per class, under root/train and root/test.

The layout and class order follow torchvision's ImageFolder: classes are the
train/ sub-folders sorted by name, and test/ uses the same mapping (it may
lack classes, never add them). Real folders are messy, so:

- hidden files (.DS_Store, ._name), files without an image extension that
  torchvision's ImageFolder reads (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff
  .webp, and .gif; any case), and entries that are not regular files
  (a FIFO, a socket) are left out, and counted in one line;
- folders are walked following symbolic links (fmjax.data.folder_walk), but
  each real folder once, under the class whose folder holds it, and each real
  file once: a link back up the tree, or to another class's folder, adds
  nothing (and is counted);
- an image that cannot be read is an error naming it, or, with
  on_bad_image="skip", is left out and named at the start. Files are checked
  when listed by their first bytes; with "skip" every image is also decoded
  once, since a damaged body only shows when decoded (with "error" that
  happens when the image is first loaded, and the error names the file too);
- a train/ class folder left with no image is an error: dropping the class
  would shift the labels of the classes after it.

Decoding and resizing are fmjax.data.image_files'. With a PreparedStore, a
split's inspection and, once loaded whole, its pixels are kept between runs
(fmjax.data.prepared_images).
"""

import os
from pathlib import Path
from typing import Callable, Optional

from fmjax.data.folder_walk import NOT_REGULAR_KINDS, identity, walk_image_files
from fmjax.data.image_files import (
    IMAGE_EXTENSIONS,
    decoding_split,
    inspect_image,
    undecodable_images,
)
from fmjax.data.prepared import PreparedStore
from fmjax.data.prepared_images import (
    Inspection,
    kept_positions,
    listing_key,
    prepared_inspection,
    with_prepared_pixels,
)
from fmjax.data.split import Split
from fmjax.errors import UserError

BAD_IMAGE_CHOICES = ("error", "skip")
_MAX_NAMED = 10  # skipped images named in the start-up line; the rest are counted


def image_folder_splits(
    root: str,
    image_size: int,
    on_bad_image: str,
    report: Callable[[str], None],
    store: Optional[PreparedStore] = None,
) -> tuple[list[str], Split, Split]:
    """Class names and the (train, test) splits of the image folder at `root`.

    Args:
      root: the folder holding train/ and test/.
      image_size: images load resized to image_size x image_size.
      on_bad_image: "error" or "skip", for images that cannot be read.
      report: prints one line; told what was left out of each split.
      store: where each split's inspection and pixels are kept between runs
        (fmjax.data.prepared_images); None to inspect and decode each time.
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
        _folder_split(train_dir, class_names, True, image_size, on_bad_image, report, store),
        _folder_split(test_dir, class_names, False, image_size, on_bad_image, report, store),
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
    store: Optional[PreparedStore],
) -> Split:
    paths, labels = [], []
    left_out: dict[str, list[str]] = {
        "hidden file": [], "non-image file": [], "non-regular file": [], "repeated folder link": []
    }
    # A link inside a class folder to another class's folder, or up the tree,
    # would relabel other classes' images: every real folder is walked once,
    # under the class whose folder holds it.
    walked = {identity(split_dir)} | {
        identity(split_dir / name) for name in class_names if (split_dir / name).is_dir()
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

    listing, inspection = None, None
    if store is not None:
        listing = listing_key(store, str(split_dir), paths, labels, class_names, image_size, on_bad_image)
        inspection = prepared_inspection(listing, labels)
    if inspection is None:
        inspection = _inspected(paths, on_bad_image)
    if inspection.skipped:
        named = [os.path.relpath(paths[i], split_dir) for i in inspection.skipped]
        more = f" and {len(named) - _MAX_NAMED} more" if len(named) > _MAX_NAMED else ""
        report(
            f"{split_dir}: skipped {_plural(len(named), 'unreadable image')}: "
            f"{', '.join(named[:_MAX_NAMED])}{more}"
        )
    keep = kept_positions(len(paths), inspection.skipped)
    paths = [paths[i] for i in keep]
    labels = [labels[i] for i in keep]
    high_depth = [inspection.high_depth[i] for i in keep]

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
    split = decoding_split(paths, labels, high_depth, image_size, "(or set config.data.on_bad_image=skip)")
    return split if listing is None else with_prepared_pixels(split, listing, inspection)


def _inspected(paths: list[str], on_bad_image: str) -> Inspection:
    """Which images are unreadable (skipped, or the first an error) and which are high-depth, from the files.

    Raises:
      UserError: an unreadable image, with on_bad_image="error".
    """
    problems, high_depth = zip(*map(inspect_image, paths)) if paths else ((), ())
    if any(problems) and on_bad_image == "error":
        raise UserError(f"{next(p for p in problems if p)} (or set config.data.on_bad_image=skip)")
    keep = [i for i, problem in enumerate(problems) if not problem]
    if on_bad_image == "skip":
        undecodable = set(undecodable_images([paths[i] for i in keep], [high_depth[i] for i in keep]))
        keep = [i for position, i in enumerate(keep) if position not in undecodable]
    return Inspection(sorted(set(range(len(paths))) - set(keep)), list(high_depth))


def _list_class(class_dir: Path, walked: set) -> tuple[list[str], dict[str, list[str]]]:
    """The image files under class_dir, recursively and sorted, and what was left out, by kind.

    `walked` holds the identities of the split's folder, every class folder
    and those walked already (this adds the ones it walks): a link to one of
    them adds nothing, so a loop or a link to another class cannot relabel
    images. An entry whose type cannot be read is kept, to be named as an
    unreadable image.
    """
    if not class_dir.is_dir():
        return [], {}
    walk = walk_image_files(str(class_dir), walked)
    not_regular = [entry.path for entry in walk.named_like_images if entry.kind in NOT_REGULAR_KINDS]
    images = [entry.path for entry in walk.named_like_images if entry.kind not in NOT_REGULAR_KINDS]
    return images, {
        "hidden file": walk.hidden_files,
        "non-image file": walk.non_image_files,
        "non-regular file": not_regular,
        "repeated folder link": walk.repeated_folders,
    }


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def _counted(paths: list[str], noun: str, split_dir: Path) -> str:
    """E.g. "2 hidden files (cat/.DS_Store, ...)"."""
    example = os.path.relpath(paths[0], split_dir)
    return f"{_plural(len(paths), noun)} ({example}{', ...' * (len(paths) > 1)})"
