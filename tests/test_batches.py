"""Which examples each batch holds: the guarantees resumption and multi-host training rely on.

An epoch's order depends only on (seed, epoch), start_batch skips without
reading, processes split each global batch, and the padded test split counts
every example exactly once. Each example's label here is its index, so a
batch's labels say which examples it holds.
"""

import dataclasses

import numpy as np
import pytest

from fmjax.data.batches import (
    padded_batches,
    padded_test_indices,
    shuffled_train_indices,
)
from fmjax.data.dataset import Dataset
from fmjax.data.split import Split, array_split
from fmjax.errors import UserError

NUM_TRAIN, NUM_TEST = 103, 45


def indexed_split(num_examples: int, seed: int) -> Split:
    """Random 4x4 pixels (seeded) whose labels are the example indices."""
    pixels = np.random.default_rng(seed).integers(0, 256, (num_examples, 4, 4, 3), np.uint8)
    return array_split(pixels, np.arange(num_examples), 4)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return Dataset("indexed", ["only"], (4, 4, 3), 7, indexed_split(NUM_TRAIN, 0), indexed_split(NUM_TEST, 1))


def concatenated(batches, key: str) -> np.ndarray:
    return np.concatenate([batch[key] for batch in batches])


def test_training_order_is_a_numpy_permutation_of_seed_and_epoch(dataset):
    labels = concatenated(dataset.train_batches(3, 10), "label")
    # The documented order: the first 10 full batches of default_rng([seed, epoch]).permutation.
    np.testing.assert_array_equal(labels, np.random.default_rng([7, 3]).permutation(NUM_TRAIN)[:100])
    assert not np.array_equal(labels, concatenated(dataset.train_batches(4, 10), "label"))
    other_seed = dataclasses.replace(dataset, seed=8)
    assert not np.array_equal(labels, concatenated(other_seed.train_batches(3, 10), "label"))


def test_batches_carry_the_pixels_and_indices_of_their_examples(dataset):
    everything = dataset.train_split.load(np.arange(NUM_TRAIN))
    for batch in dataset.train_batches(0, 10):
        np.testing.assert_array_equal(batch["index"], batch["label"])
        np.testing.assert_array_equal(batch["image"], everything[batch["index"]])


def test_start_batch_resumes_the_same_stream(dataset):
    full = list(dataset.train_batches(2, 10))
    resumed = list(dataset.train_batches(2, 10, start_batch=7))
    assert len(resumed) == 3
    for skipped_ahead, uninterrupted in zip(resumed, full[7:]):
        np.testing.assert_array_equal(skipped_ahead["image"], uninterrupted["image"])
        np.testing.assert_array_equal(skipped_ahead["label"], uninterrupted["label"])
    assert list(dataset.train_batches(2, 10, start_batch=10)) == []


def test_start_batch_never_reads_the_skipped_examples():
    num_examples, batch_size, start_batch = 40, 8, 3
    skipped = shuffled_train_indices(7, 0, num_examples, batch_size, 0, 0, 1)[:start_batch]

    def load_unless_skipped(indices):
        if np.isin(indices, skipped).any():
            raise AssertionError(f"read skipped examples {indices}")
        return np.zeros((len(indices), 4, 4, 3), np.uint8)

    split = Split(np.zeros(num_examples, np.int32), load_unless_skipped, np.dtype(np.uint8))
    probe = Dataset("probe", ["only"], (4, 4, 3), 7, split, split)
    batches = list(probe.train_batches(0, batch_size, start_batch=start_batch))
    assert len(batches) == num_examples // batch_size - start_batch
    with pytest.raises(AssertionError, match="read skipped examples"):
        list(probe.train_batches(0, batch_size))


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_together_read_the_one_process_batches(dataset, process_count):
    single = list(dataset.train_batches(1, 12, start_batch=2))
    per_process = [
        list(dataset.train_batches(1, 12, start_batch=2, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    for k, whole in enumerate(single):
        parts = [batches[k] for batches in per_process]
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key])


def test_every_train_example_is_read_by_exactly_one_process_per_epoch():
    shares = [shuffled_train_indices(5, 2, NUM_TRAIN, 12, 0, p, 3) for p in range(3)]
    read = np.concatenate([share.reshape(-1) for share in shares])
    assert len(read) == len(set(read)) == (NUM_TRAIN // 12) * 12


def test_padded_test_indices_fill_the_last_batch_with_masked_copies_of_example_0():
    indices, mask = padded_test_indices(5, 4, 0, 1)
    np.testing.assert_array_equal(indices, [[0, 1, 2, 3], [4, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 0, 0, 0]])
    # Two processes: each takes its half of every global batch.
    indices, mask = padded_test_indices(5, 4, 1, 2)
    np.testing.assert_array_equal(indices, [[2, 3], [0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1], [0, 0]])


def test_padded_batches_of_a_split_without_a_dataset(dataset):
    split = dataset.test_split
    batches = list(padded_batches(split, 20))
    np.testing.assert_array_equal([len(batch["mask"]) for batch in batches], [20, 20, 20])
    mask = concatenated(batches, "mask")
    np.testing.assert_array_equal(mask, np.arange(60) < NUM_TEST)
    images = concatenated(batches, "image")
    np.testing.assert_array_equal(images[:NUM_TEST], split.load(np.arange(NUM_TEST)))
    np.testing.assert_array_equal(images[NUM_TEST:], np.broadcast_to(images[0], (15, 4, 4, 3)))


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_test_batches_are_padded_masked_and_complete(dataset, process_count):
    batch_size = 6  # 45 test examples: 8 batches, the last with 3 real.
    per_process = [
        list(dataset.test_batches(batch_size, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    assert {len(batches) for batches in per_process} == {dataset.num_test_batches(batch_size)} == {8}
    # Process order within each batch, then batch order: the global stream.
    in_global_order = [batches[k] for k in range(8) for batches in per_process]
    mask = concatenated(in_global_order, "mask")
    labels = concatenated(in_global_order, "label")
    np.testing.assert_array_equal(mask, np.arange(48) < NUM_TEST)
    np.testing.assert_array_equal(labels[:NUM_TEST], np.arange(NUM_TEST))


def test_batch_size_mistakes_are_user_errors(dataset):
    with pytest.raises(UserError, match="multiple of 4"):
        dataset.train_batches(0, 30, process_count=4)
    with pytest.raises(UserError, match="multiple of 4"):
        dataset.test_batches(30, process_count=4)
    with pytest.raises(UserError, match="must be at least 1"):
        padded_batches(dataset.test_split, 0)
    with pytest.raises(UserError, match="103 training examples of indexed"):
        dataset.steps_per_epoch(200)
