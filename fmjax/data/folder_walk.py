"""One walk of a folder tree for image files, for image folders and for prediction alike.

Links are followed, but each real folder is walked once and each real file
listed once: a link back up the tree (a loop), or to a folder walked
already, adds nothing and is recorded. Entries are taken in name order, a
folder's files before its sub-folders. Hidden sub-folders are skipped whole.
Every entry's type is read with one stat, never by opening it: a FIFO named
like an image would block the first read forever.
"""

import dataclasses
import errno
import os
import stat
from typing import NamedTuple, Optional

from fmjax.data.image_files import IMAGE_EXTENSIONS

# What path_kind calls a path it cannot stat for another reason than the two it names.
UNREADABLE = "unreadable"
_SPECIAL_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
# Kinds of entries that exist and are neither a regular file nor a folder.
NOT_REGULAR_KINDS = (*_SPECIAL_KINDS.values(), "not a regular file")
Identity = tuple[int, int]


def path_kind(path: str) -> str:
    """What `path` is, following links: "file", "folder", "missing", or what else.

    The others: "a FIFO", "a socket", "a character device", "a block device",
    "a broken symbolic link", "a symbolic link loop", "not a regular file".

    Raises:
      OSError: its type cannot be read (no permission to search its folder).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop"
        raise
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return _SPECIAL_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def identity(path: str) -> Identity:
    """(device, inode) of what `path` leads to: the same for every name of one real file or folder."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


class Entry(NamedTuple):
    """One entry named like an image: its path, path_kind's answer (or UNREADABLE), and why (the OS's words)."""

    path: str
    kind: str
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class FolderWalk:
    """What a walk found, each list in walk order.

    Attributes:
      named_like_images: every entry that is not hidden nor a folder and whose
        name ends in one of IMAGE_EXTENSIONS (any case), whatever it is; a
        regular file reached by several names is listed once.
      hidden_files: entries named .*, other than folders.
      non_image_files: the other entries that are not folders.
      repeated_folders: links to a folder walked already (or to be walked).
      unlisted: (folder, the OS's reason) for each folder that could not be listed.
    """

    named_like_images: list[Entry] = dataclasses.field(default_factory=list)
    hidden_files: list[str] = dataclasses.field(default_factory=list)
    non_image_files: list[str] = dataclasses.field(default_factory=list)
    repeated_folders: list[str] = dataclasses.field(default_factory=list)
    unlisted: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def image_files(self) -> list[str]:
        """The regular files among named_like_images."""
        return [entry.path for entry in self.named_like_images if entry.kind == "file"]


def walk_image_files(folder: str, walked: Optional[set[Identity]] = None) -> FolderWalk:
    """Everything under `folder`, recursively, sorted by kind.

    Args:
      folder: the folder to walk; walked whatever `walked` holds.
      walked: identities of folders not to walk (again); the walk adds
        `folder` and every folder it walks. A link to one of them is recorded
        in repeated_folders. None for a fresh set.
    """
    walked = set() if walked is None else walked
    walked.add(identity(folder))
    found = FolderWalk()
    _walk(str(folder), walked, set(), found)
    return found


def _walk(directory: str, walked: set[Identity], seen_files: set[Identity], found: FolderWalk) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as error:
        found.unlisted.append((directory, error.strerror))
        return
    subfolders = []
    for entry in entries:
        try:
            kind, reason = path_kind(entry.path), ""
        except OSError as error:
            kind, reason = UNREADABLE, error.strerror
        if kind == "folder":
            if entry.name.startswith("."):
                continue
            # Claimed when listed, so a sibling's link to it finds it taken.
            folder_identity = identity(entry.path)
            if folder_identity in walked:
                found.repeated_folders.append(entry.path)
            else:
                walked.add(folder_identity)
                subfolders.append(entry.path)
        elif entry.name.startswith("."):
            found.hidden_files.append(entry.path)
        elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            found.non_image_files.append(entry.path)
        elif kind != "file":
            found.named_like_images.append(Entry(entry.path, kind, reason))
        elif (file_identity := identity(entry.path)) not in seen_files:
            seen_files.add(file_identity)
            found.named_like_images.append(Entry(entry.path, kind))
    for subfolder in subfolders:
        _walk(subfolder, walked, seen_files, found)
