"""An image folder's split kept prepared: the pixels decoding gives, read back without decoding, for these files only.

A changed, added or removed file misses; skipped images are named on a
prepared run as on a fresh one; a damaged entry is decoded and written again;
streamed data (cache "none") neither read nor write an entry. Every test keeps
its entries in its own tmp_path.
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

from fmjax.config import base_config
from fmjax.data import image_files, image_folder, load_dataset
from fmjax.data.split import in_memory, split_pixels

IMAGE_SIZE = 8  # the images are 12x12: loading resizes them
RNG = np.random.default_rng(0)


def write_folder(root, high_depth=False):
    """root/{train,test}/{a,b,c}/: PNGs and JPEGs of noise, 3 a class to train and 2 to test."""
    for split, count in (("train", 3), ("test", 2)):
        for name in ("a", "b", "c"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = RNG.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    if high_depth:  # 16-bit grey: the test split's pixels become float32
        Image.fromarray(RNG.integers(0, 65536, (12, 12), dtype=np.uint16)).save(root / "test" / "a" / "deep.png")
    return root


def make_config(root, prepared_dir, on_bad_image="error", cache="auto"):
    config = base_config()
    config.image_size = IMAGE_SIZE
    config.data.source = "image_folder"
    config.data.root = str(root)
    config.data.prepared_dir = str(prepared_dir)
    config.data.on_bad_image = on_bad_image
    config.data.cache = cache
    return config


def loaded(config, lines=None, whole=split_pixels):
    """(train pixels, train labels, test pixels, test labels), each split loaded whole as placement does."""
    dataset = load_dataset(config, report=(lines.append if lines is not None else lambda line: None))
    train, test = whole(dataset.train_split), whole(dataset.test_split)
    if whole is in_memory:
        train, test = split_pixels(train), split_pixels(test)
    return train["image"], train["label"], test["image"], test["label"]


def assert_same(got, expected):
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def decodes(monkeypatch):
    """Counts the images decoded and inspected from their files."""
    counts = {"decoded": 0, "inspected": 0}
    load_image, inspect_image = image_files._load_image, image_folder.inspect_image

    def counted_load(*args):
        counts["decoded"] += 1
        return load_image(*args)

    def counted_inspect(path):
        counts["inspected"] += 1
        return inspect_image(path)

    monkeypatch.setattr(image_files, "_load_image", counted_load)
    monkeypatch.setattr(image_folder, "inspect_image", counted_inspect)
    return counts


def entries(folder):
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


@pytest.mark.parametrize("high_depth", [False, True])
@pytest.mark.parametrize("whole", [split_pixels, in_memory], ids=["device", "host"])
def test_prepared_pixels_are_the_decoded_ones_and_are_read_without_decoding(tmp_path, decodes, high_depth, whole):
    root, prepared = write_folder(tmp_path / "photos", high_depth), tmp_path / "prepared"
    fresh = loaded(make_config(root, ""), whole=whole)
    assert fresh[2].dtype == (np.float32 if high_depth else np.uint8)
    assert decodes["decoded"] == 15 + high_depth
    first = loaded(make_config(root, prepared), whole=whole)
    assert len(entries(prepared)) == 2  # one a split
    before = dict(decodes)
    second = loaded(make_config(root, prepared), whole=whole)
    assert decodes == before  # nothing inspected nor decoded
    assert_same(first, fresh)
    assert_same(second, fresh)


def test_a_touched_added_or_removed_file_misses(tmp_path, decodes):
    root, prepared = write_folder(tmp_path / "photos"), tmp_path / "prepared"
    loaded(make_config(root, prepared))
    touched = root / "train" / "b" / "1.png"
    info = os.stat(touched)
    os.utime(touched, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    before = decodes["decoded"]
    assert_same(loaded(make_config(root, prepared)), loaded(make_config(root, "")))
    assert decodes["decoded"] - before == 9 + 15  # the train split again, and both of the fresh load
    assert len(entries(prepared)) == 2  # the new entry replaced the train split's old one

    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "test" / "c" / "new.png")
    got = loaded(make_config(root, prepared))
    assert got[2].shape[0] == 7 and not got[2][-1].any()  # the new black image, last of class c
    (root / "train" / "a" / "0.jpg").unlink()
    got = loaded(make_config(root, prepared))
    assert got[0].shape[0] == 8
    before = decodes["decoded"]
    assert_same(loaded(make_config(root, prepared)), got)
    assert decodes["decoded"] == before
    assert len(entries(prepared)) == 2


def test_a_file_rewritten_with_its_time_set_back_or_only_chmodded_is_read_again(tmp_path, decodes):
    """The key holds each file's change time (ctime), which every write and chmod moves and nothing sets back."""
    root, prepared = write_folder(tmp_path / "photos"), tmp_path / "prepared"
    config = make_config(root, prepared, on_bad_image="skip")
    first = loaded(config)
    path = root / "test" / "a" / "0.jpg"
    info = os.stat(path)
    path.write_bytes(path.read_bytes()[::-1])  # the same size, other bytes: no image any more
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    rewritten = loaded(config)
    assert len(rewritten[3]) == len(first[3]) - 1  # the test split lost the image
    before = decodes["inspected"]
    os.chmod(path, 0o600)
    loaded(config)
    assert decodes["inspected"] > before


def truncated_jpeg() -> bytes:
    encoded = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(encoded, "JPEG")
    return encoded.getvalue()[: len(encoded.getvalue()) // 2]


def test_skipped_images_are_named_on_a_prepared_run_as_on_a_fresh_one(tmp_path, decodes):
    root, prepared = write_folder(tmp_path / "photos"), tmp_path / "prepared"
    (root / "train" / "b" / "cut.jpg").write_bytes(truncated_jpeg())
    (root / "test" / "c" / "page.png").write_text("<html>404</html>")
    fresh_lines, first_lines, second_lines = [], [], []
    fresh = loaded(make_config(root, "", "skip"), fresh_lines)
    assert fresh_lines == [
        f"{root / 'train'}: skipped 1 unreadable image: b/cut.jpg",
        f"{root / 'test'}: skipped 1 unreadable image: c/page.png",
    ]
    loaded(make_config(root, prepared, "skip"), first_lines)
    before = dict(decodes)
    second = loaded(make_config(root, prepared, "skip"), second_lines)
    assert decodes == before
    assert first_lines == second_lines == fresh_lines
    assert_same(second, fresh)
    # The entry is on_bad_image's: "error" names the file, from the files.
    with pytest.raises(image_folder.UserError, match="page.png is not a JPEG"):
        load_dataset(make_config(root, prepared, "error"))


@pytest.mark.parametrize("damage", ["truncate", "flip a pixel"])
def test_a_damaged_entry_is_decoded_and_written_again(tmp_path, decodes, damage):
    root, prepared = write_folder(tmp_path / "photos"), tmp_path / "prepared"
    fresh = loaded(make_config(root, prepared))
    for name in entries(prepared):
        data = (prepared / name).read_bytes()
        damaged = data[: len(data) - 100] if damage == "truncate" else data[:-5] + bytes([data[-5] ^ 1]) + data[-4:]
        (prepared / name).write_bytes(damaged)
    before = decodes["decoded"]
    lines = []
    assert_same(loaded(make_config(root, prepared), lines), fresh)
    assert lines == [] and decodes["decoded"] - before == 15
    before = dict(decodes)
    assert_same(loaded(make_config(root, prepared)), fresh)
    assert decodes == before  # written again, whole


def test_a_folder_that_cannot_be_written_warns_once_and_the_pixels_are_right(tmp_path):
    root = write_folder(tmp_path / "photos")
    (tmp_path / "a_file").write_text("")
    lines = []
    assert_same(loaded(make_config(root, tmp_path / "a_file" / "prepared"), lines), loaded(make_config(root, "")))
    assert lines == [
        f"warning: cannot keep prepared data in {tmp_path / 'a_file' / 'prepared'} (Not a directory); "
        'the run goes on without it (config.data.prepared_dir="" turns it off)'
    ]


def test_streamed_data_neither_read_nor_write_an_entry(tmp_path, decodes):
    root, prepared = write_folder(tmp_path / "photos"), tmp_path / "prepared"
    dataset = load_dataset(make_config(root, prepared, cache="none"))
    assert dataset.train_split.load_all is None
    list(dataset.train_batches(0, 3))
    split_pixels(dataset.test_split)
    assert not prepared.exists()
    loaded(make_config(root, prepared))  # an entry, for the streamed run to ignore
    before = decodes["inspected"]
    load_dataset(make_config(root, prepared, cache="none"))
    assert decodes["inspected"] - before == 15


def test_batches_loaded_by_index_decode_as_before_on_a_prepared_run(tmp_path):
    root, prepared = write_folder(tmp_path / "photos"), tmp_path / "prepared"
    fresh = loaded(make_config(root, ""))
    loaded(make_config(root, prepared))
    dataset = load_dataset(make_config(root, prepared))
    np.testing.assert_array_equal(dataset.test_split.load(np.array([4, 0])), fresh[2][[4, 0]])
