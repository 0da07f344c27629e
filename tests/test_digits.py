"""The digits split kept prepared: the same pixels as scikit-learn's, and a later run that never imports it.

Every test keeps its entries in its own tmp_path.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fmjax.config import base_config
from fmjax.data import digits as digits_module
from fmjax.data import load_dataset
from fmjax.data.split import split_pixels

IMAGE_SIZE = 8  # as load_digits gives them: no resize, so the pixels are the raw counts / 16


def make_config(prepared_dir, image_size=IMAGE_SIZE, **data_fields):
    config = base_config()
    config.image_size = image_size
    config.data.prepared_dir = str(prepared_dir)
    config.data.update(data_fields)
    return config


def loaded(config, lines=None):
    """(class names, train pixels and labels, test pixels and labels) of the config's digits."""
    dataset = load_dataset(config, report=(lines.append if lines is not None else print))
    train, test = split_pixels(dataset.train_split), split_pixels(dataset.test_split)
    return dataset.class_names, train["image"], train["label"], test["image"], test["label"]


def scikit_learns(test_fraction=0.25, split_seed=0):
    """The split as scikit-learn gives it and the digits source always scaled it: /16, float32, grey as RGB."""
    raw = load_digits()
    images = (raw.images / 16.0).astype(np.float32)[..., None].repeat(3, axis=-1)
    train_images, test_images, train_labels, test_labels = train_test_split(
        images, raw.target, test_size=test_fraction, random_state=split_seed, stratify=raw.target
    )
    return [str(d) for d in raw.target_names], train_images, train_labels, test_images, test_labels


def assert_same(got, expected):
    assert got[0] == expected[0]
    for a, b in zip(got[1:], expected[1:]):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert got[1].dtype == np.float32 and got[2].dtype == np.int32


def entries(folder):
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def test_prepared_and_fresh_splits_are_scikit_learns_exactly(tmp_path):
    expected = scikit_learns()
    fresh = loaded(make_config(""))
    first = loaded(make_config(tmp_path))
    (entry,) = entries(tmp_path)
    assert entry.startswith("digits-")
    second = loaded(make_config(tmp_path))
    for got in (fresh, first, second):
        assert_same(got, expected)
    assert entries(tmp_path) == [entry]
    # Resized, the prepared split gives the pixels the fresh one does.
    assert_same(loaded(make_config(tmp_path, image_size=16)), loaded(make_config("", image_size=16)))
    assert entries(tmp_path) == [entry]  # the 8x8 split does not depend on the run's size


def test_each_test_fraction_split_seed_and_scikit_learn_version_has_its_own_entry(tmp_path, monkeypatch):
    assert_same(loaded(make_config(tmp_path, test_fraction=0.5, split_seed=3)), scikit_learns(0.5, 3))
    assert_same(loaded(make_config(tmp_path)), scikit_learns())
    assert_same(loaded(make_config(tmp_path, test_fraction=0.5, split_seed=3)), scikit_learns(0.5, 3))
    assert len(entries(tmp_path)) == 2
    monkeypatch.setattr(digits_module.importlib.metadata, "version", lambda name: "0.0.0")
    assert_same(loaded(make_config(tmp_path)), scikit_learns())
    assert len(entries(tmp_path)) == 3


PROGRAM = """
import hashlib, json, sys
from fmjax.config import base_config
from fmjax.data import load_dataset
from fmjax.data.split import split_pixels
config = base_config()
config.data.prepared_dir = sys.argv[1]
dataset = load_dataset(config)
digest = hashlib.sha256()
for split in (dataset.train_split, dataset.test_split):
    pixels = split_pixels(split)
    digest.update(pixels["image"].tobytes())
    digest.update(pixels["label"].tobytes())
print(json.dumps({"sklearn": "sklearn" in sys.modules, "scipy": "scipy" in sys.modules,
                  "digest": digest.hexdigest(), "classes": dataset.class_names}))
"""


def test_a_later_run_reads_the_split_without_importing_scikit_learn(tmp_path):
    def run():
        done = subprocess.run(
            [sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    first, second = run(), run()
    assert first["sklearn"] is True
    assert second["sklearn"] is False and second["scipy"] is False
    assert second["digest"] == first["digest"] and second["classes"] == first["classes"] == list("0123456789")


@pytest.mark.parametrize("damage", ["truncate", "flip a bit in the arrays", "garbage"])
def test_a_damaged_entry_is_written_again_and_the_split_is_still_right(tmp_path, damage):
    loaded(make_config(tmp_path))
    (entry,) = entries(tmp_path)
    path = tmp_path / entry
    data = path.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "flip a bit in the arrays": data[:-1000] + bytes([data[-1000] ^ 0x10]) + data[-999:],
        "garbage": b"\x00" * len(data),
    }[damage]
    path.write_bytes(damaged)
    lines = []
    assert_same(loaded(make_config(tmp_path), lines), scikit_learns())
    assert lines == []
    assert path.read_bytes() == data  # written again, whole


def test_an_entry_whose_checksums_hold_but_whose_values_cannot_be_digits_is_a_miss(tmp_path):
    config = make_config(tmp_path)
    store = digits_module.PreparedStore(str(tmp_path), print)
    key = digits_module._prepared_key(0.25, 0)
    class_names, arrays = digits_module._split_digits(0.25, 0)
    bad_label = dict(arrays, train_labels=np.full_like(arrays["train_labels"], 10))
    store.write("digits", key, {"class_names": class_names}, bad_label)
    assert_same(loaded(config), scikit_learns())
    bright = dict(arrays, test_images=np.full_like(arrays["test_images"], 17))
    store.write("digits", key, {"class_names": class_names}, bright)
    assert_same(loaded(config), scikit_learns())
    store.write("digits", key, {"class_names": "0123456789"}, arrays)
    assert_same(loaded(config), scikit_learns())
    assert digits_module._read_prepared(store, key) is not None  # each miss wrote the right entry again


def test_a_folder_that_cannot_be_written_warns_once_and_the_split_is_right(tmp_path):
    (tmp_path / "a_file").write_text("")
    lines = []
    assert_same(loaded(make_config(tmp_path / "a_file" / "prepared"), lines), scikit_learns())
    assert lines == [
        f"warning: cannot keep prepared data in {tmp_path / 'a_file' / 'prepared'} (Not a directory); "
        'the run goes on without it (config.data.prepared_dir="" turns it off)'
    ]


def test_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert_same(loaded(make_config("")), scikit_learns())
    assert os.listdir(tmp_path) == []


def test_a_config_from_before_the_key_prepares_nothing(tmp_path, monkeypatch):
    """evaluate.py reads an older run's config.json, which has no data.prepared_dir."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = make_config("")
    del config.data["prepared_dir"]
    assert_same(loaded(config), scikit_learns())
    assert os.listdir(tmp_path) == []
