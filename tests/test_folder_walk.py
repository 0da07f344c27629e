"""The one folder walk: links followed, each real folder walked once, each real file listed once, nothing opened."""

import errno
import os

import pytest

from fmjax.data import folder_walk
from fmjax.data.folder_walk import UNREADABLE, path_kind, walk_image_files


@pytest.fixture
def tree(tmp_path):
    """a.png, B.JPG, notes.txt, .hidden.png, sub/c.png, .secret/d.png, and links and a FIFO."""
    for name in ("a.png", "B.JPG", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"x")
    (tmp_path / ".secret").mkdir()
    (tmp_path / ".secret" / "d.png").write_bytes(b"x")
    os.symlink(".", tmp_path / "again")  # a loop
    os.symlink("..", tmp_path / "sub" / "up")  # another
    os.symlink("a.png", tmp_path / "same.png")  # a file by a second name
    os.symlink("nowhere.png", tmp_path / "broken.png")
    os.mkfifo(tmp_path / "pipe.png")
    return tmp_path


def test_the_walk_sorts_every_entry_by_kind_in_walk_order(tree):
    walk = walk_image_files(str(tree))
    # Name order (upper case first), a folder's files before its sub-folders.
    assert walk.image_files == [str(tree / "B.JPG"), str(tree / "a.png"), str(tree / "sub" / "c.png")]
    assert [(entry.path, entry.kind) for entry in walk.named_like_images if entry.kind != "file"] == [
        (str(tree / "broken.png"), "a broken symbolic link"),
        (str(tree / "pipe.png"), "a FIFO"),
    ]
    assert walk.hidden_files == [str(tree / ".hidden.png")]
    assert walk.non_image_files == [str(tree / "notes.txt")]
    assert walk.repeated_folders == [str(tree / "again"), str(tree / "sub" / "up")]
    assert walk.unlisted == []


def test_folders_already_walked_are_not_walked_again(tree, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    os.symlink(tree / "sub", other / "linked")
    walked = set()
    walk_image_files(str(tree), walked)
    later = walk_image_files(str(other), walked)
    assert later.image_files == [] and later.repeated_folders == [str(other / "linked")]


def test_a_sibling_link_claims_the_folder_once(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.png").write_bytes(b"x")
    os.symlink("real", tmp_path / "alias")  # listed before real/
    walk = walk_image_files(str(tmp_path))
    assert walk.image_files == [str(tmp_path / "alias" / "x.png")]
    assert walk.repeated_folders == [str(tmp_path / "real")]


def test_path_kind_reads_the_type_without_opening(tree):
    assert path_kind(str(tree / "a.png")) == "file"
    assert path_kind(str(tree / "same.png")) == "file"
    assert path_kind(str(tree / "sub")) == "folder"
    assert path_kind(str(tree / "pipe.png")) == "a FIFO"
    assert path_kind(str(tree / "broken.png")) == "a broken symbolic link"
    assert path_kind(str(tree / "missing.png")) == "missing"
    os.symlink("loop.png", tree / "loop.png")
    assert path_kind(str(tree / "loop.png")) == "a symbolic link loop"


def test_unlistable_folders_and_unreadable_entries_are_recorded(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    (tmp_path / "listed_only").mkdir()
    (tmp_path / "listed_only" / "e.png").write_bytes(b"x")
    # Permission errors as a non-root user meets them (root reads every folder, so they are raised here).
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES))
    real_scandir, real_stat = folder_walk.os.scandir, folder_walk.os.stat

    def scandir(path):
        if os.path.basename(path) == "locked":
            raise denied
        return real_scandir(path)

    def stat(path, *args, **kwargs):
        if os.path.basename(path) == "e.png":
            raise denied
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(folder_walk.os, "scandir", scandir)
    monkeypatch.setattr(folder_walk.os, "stat", stat)
    walk = walk_image_files(str(tmp_path))
    monkeypatch.undo()
    assert walk.unlisted == [(str(tmp_path / "locked"), "Permission denied")]
    (entry,) = walk.named_like_images
    assert (entry.path, entry.kind, entry.reason) == (
        str(tmp_path / "listed_only" / "e.png"), UNREADABLE, "Permission denied"
    )
