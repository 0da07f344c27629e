"""The store of prepared data: entries read back as written, and no failure of the cache costs a run.

A damaged, foreign or planted file at an entry's name is a miss and is
written again; a folder that cannot be written warns once; writes never
follow a link, never leave a temporary file, and two writers of one entry
both succeed.
"""

import errno
import hashlib
import json
import os
import threading

import numpy as np
import pytest
from conftest import shipped_base_config

from fmjax.data import prepared
from fmjax.data.prepared import PreparedStore
from fmjax.run import identity

KEY = {"version": 1, "name": "example", "size": 8}
FACTS = {"class_names": ["a", "b"], "skipped": [3]}


def example_arrays():
    rng = np.random.default_rng(0)
    return {
        "pixels": rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8),
        "labels": np.array([0, 1, 1, 0, 1], np.int32),
        "floats": rng.random((2, 3), dtype=np.float32),
        "empty": np.zeros((0, 4, 4, 3), np.uint8),
    }


def assert_reads_back(store, key=KEY):
    entry = store.read("example", key)
    assert entry is not None
    assert entry.facts == FACTS
    for name, expected in example_arrays().items():
        got = entry.array(name)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.fixture
def store(tmp_path):
    lines = []
    store = PreparedStore(str(tmp_path / "prepared"), lines.append)
    store.lines = lines
    return store


def test_an_entry_reads_back_as_written(store):
    assert store.read("example", KEY) is None  # nothing yet: a miss, not an error
    store.write("example", KEY, FACTS, example_arrays())
    assert_reads_back(store)
    (name,) = os.listdir(store.folder)
    assert name.startswith("example-") and name.endswith(prepared.SUFFIX)
    assert os.stat(store.path("example", KEY)).st_mode & 0o777 == 0o600  # decoded images may be private
    assert os.stat(store.folder).st_mode & 0o777 == 0o700
    assert store.read("example", {**KEY, "size": 16}) is None  # another key, another file
    assert store.read("other", KEY) is None
    assert store.lines == []


def test_a_tilde_means_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert PreparedStore("~/cache", print).folder == str(tmp_path / "cache")


def damaged(data: bytes, how: str) -> bytes:
    header_end = data.index(b'"version":1}}') + len(b'"version":1}}')
    return {
        "empty": b"",
        "cut in the header": data[: header_end - 5],
        "cut in the arrays": data[:-10],
        "a flipped bit in an array": data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],
        "a flipped bit in the header": data[:60] + bytes([data[60] ^ 1]) + data[61:],
        "another magic": b"NOTFMJAX" + data[8:],
        "garbage": os.urandom(len(data)),
        "a length past the end": data[:8] + (2**62).to_bytes(8, "little") + data[16:],
    }[how]


@pytest.mark.parametrize("how", [
    "empty", "cut in the header", "cut in the arrays", "a flipped bit in an array",
    "a flipped bit in the header", "another magic", "garbage", "a length past the end",
])
def test_a_damaged_entry_is_a_miss_and_is_written_again(store, how):
    store.write("example", KEY, FACTS, example_arrays())
    path = store.path("example", KEY)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(damaged(data, how))
    entry = store.read("example", KEY)
    # A damaged header is no entry; damaged arrays are not returned.
    assert entry is None or any(entry.array(name) is None for name in example_arrays())
    store.write("example", KEY, FACTS, example_arrays())
    assert_reads_back(store)
    assert store.lines == []


def test_an_entry_of_another_format_or_key_is_a_miss(store, monkeypatch):
    store.write("example", KEY, FACTS, example_arrays())
    path = store.path("example", KEY)
    monkeypatch.setattr(prepared, "FORMAT_VERSION", prepared.FORMAT_VERSION + 1)
    assert store.read("example", KEY) is None
    assert store.path("example", KEY) != path  # a newer format writes beside, never over, an older one
    monkeypatch.undo()
    # A file renamed to another key's name holds the wrong key.
    os.rename(path, store.path("example", {**KEY, "size": 16}))
    assert store.read("example", {**KEY, "size": 16}) is None


def test_a_link_at_the_entry_name_is_never_followed_nor_written_through(store, tmp_path):
    target = tmp_path / "elsewhere"
    other = PreparedStore(str(tmp_path / "other"), print)
    other.write("example", KEY, FACTS, example_arrays())  # a valid entry, behind a link
    os.rename(other.path("example", KEY), target)
    before = target.read_bytes()
    os.makedirs(store.folder)
    os.symlink(target, store.path("example", KEY))
    assert store.read("example", KEY) is None
    store.write("example", KEY, FACTS, example_arrays())
    assert not os.path.islink(store.path("example", KEY))
    assert target.read_bytes() == before
    assert_reads_back(store)


def test_a_fifo_at_the_entry_name_is_a_miss_without_blocking(store):
    os.makedirs(store.folder)
    os.mkfifo(store.path("example", KEY))
    assert store.read("example", KEY) is None
    store.write("example", KEY, FACTS, example_arrays())
    assert_reads_back(store)


def test_a_folder_that_cannot_be_written_warns_once(tmp_path):
    (tmp_path / "a_file").write_text("")
    lines = []
    store = PreparedStore(str(tmp_path / "a_file" / "prepared"), lines.append)
    store.write("example", KEY, FACTS, example_arrays())
    store.write("example", {**KEY, "size": 16}, FACTS, example_arrays())
    assert store.read("example", KEY) is None
    assert lines == [
        f"warning: cannot keep prepared data in {store.folder} (Not a directory); the run goes on "
        'without it (config.data.prepared_dir="" turns it off)'
    ]


def test_a_folder_at_the_entry_name_warns_once(store):
    os.makedirs(store.path("example", KEY))
    store.write("example", KEY, FACTS, example_arrays())
    assert len(store.lines) == 1 and "cannot keep prepared data" in store.lines[0]
    assert os.listdir(store.folder) == [os.path.basename(store.path("example", KEY))]  # no temporary left


def test_a_full_disk_warns_once_and_leaves_no_temporary_file(store, monkeypatch):
    def full_disk(source, destination):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prepared.os, "replace", full_disk)
    store.write("example", KEY, FACTS, example_arrays())
    store.write("example", KEY, FACTS, example_arrays())
    assert store.lines == [
        f"warning: cannot keep prepared data in {store.folder} (No space left on device); the run goes on "
        'without it (config.data.prepared_dir="" turns it off)'
    ]
    assert os.listdir(store.folder) == []


def test_two_writers_of_one_entry_both_succeed_and_a_reader_never_sees_half(store):
    store.write("example", KEY, FACTS, example_arrays())
    errors, reads = [], []

    def write():
        try:
            for _ in range(20):
                store.write("example", KEY, FACTS, example_arrays())
        except Exception as error:  # noqa: BLE001 - any failure is the test's
            errors.append(error)

    def read():
        for _ in range(40):
            entry = store.read("example", KEY)
            reads.append(entry is not None and all(entry.array(name) is not None for name in example_arrays()))

    threads = [threading.Thread(target=f) for f in (write, write, read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and store.lines == []
    # The name always leads to a whole file: the old one or the new one.
    assert len(reads) == 40 and all(reads)
    assert_reads_back(store)
    assert os.listdir(store.folder) == [os.path.basename(store.path("example", KEY))]


def test_keep_only_this_deletes_the_kinds_other_entries_and_only_those(store, tmp_path):
    store.write("example", KEY, FACTS, example_arrays())
    store.write("other", KEY, FACTS, example_arrays())
    target = tmp_path / "target"
    target.write_text("kept")
    os.symlink(target, os.path.join(store.folder, f"example-planted{prepared.SUFFIX}"))
    newer = {**KEY, "size": 16}
    store.write("example", newer, FACTS, example_arrays(), keep_only_this=True)
    assert sorted(os.listdir(store.folder)) == sorted(
        os.path.basename(store.path(kind, key)) for kind, key in (("example", newer), ("other", KEY))
    )
    assert target.read_text() == "kept"
    assert_reads_back(store, newer)


def test_an_array_of_a_dtype_the_format_does_not_keep_is_refused(store):
    with pytest.raises(ValueError, match="float64"):
        store.write("example", KEY, FACTS, {"x": np.zeros(3)})
    assert os.listdir(store.folder) == []


def test_the_config_key_defaults_to_the_users_cache_and_may_change_on_resume():
    assert shipped_base_config().data.prepared_dir == "~/.cache/fmjax/prepared"
    saved = {"data.prepared_dir": "~/.cache/fmjax/prepared", "seed": 0}
    assert identity.differences(saved, {"data.prepared_dir": "", "seed": 0}) == []


@pytest.mark.parametrize("forged", [
    {"shape": [2**40, 2**40, 2**40]}, {"shape": [-1, 4, 4, 3]}, {"dtype": "object"}, {"offset": 2**70}, {"shape": "big"},
])
def test_a_header_forged_with_a_valid_checksum_is_a_miss(store, forged):
    store.write("example", KEY, FACTS, example_arrays())
    path = store.path("example", KEY)
    with open(path, "rb") as f:
        data = f.read()
    length = int.from_bytes(data[8:16], "little")
    header = json.loads(data[48 : 48 + length])
    header["arrays"]["pixels"].update(forged)
    new_header = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(data[:8] + len(new_header).to_bytes(8, "little") + hashlib.sha256(new_header).digest())
        f.write(new_header + data[48 + length :])
    assert store.read("example", KEY) is None
