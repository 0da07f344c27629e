"""Which examples each batch holds, and batches loaded on the host a few ahead.

The training order is a pure function of (seed, epoch), and a process's share
is a slice of each global batch, so a resumed run reads the same batches as an
uninterrupted one and P processes together read what one process would. The
test split keeps its order, padded with masked copies so evaluation counts
every example exactly once.
"""

import concurrent.futures
from typing import Iterator, Optional

import numpy as np

from fmjax.core.batch_size import check_global_batch_size
from fmjax.data.split import Split

Batch = dict[str, np.ndarray]
# Batches loaded ahead of the one the step reads.
_PREFETCH_BATCHES = 2


def shuffled_train_indices(
    seed: int,
    epoch: int,
    num_train: int,
    global_batch_size: int,
    start_batch: int,
    process_index: int,
    process_count: int,
) -> np.ndarray:
    """The train indices a process reads in an epoch, [num_batches, local_batch].

    Row k is this process's contiguous slice of global batch start_batch + k.
    The examples that do not fill a last global batch are left out, and the
    shuffle decides which ones they are.
    """
    num_batches = num_train // global_batch_size
    order = np.random.default_rng([seed, epoch]).permutation(num_train)
    global_batches = order[: num_batches * global_batch_size].reshape(
        num_batches, global_batch_size
    )
    return _process_slice(global_batches[start_batch:], process_index, process_count)


def padded_test_indices(
    num_test: int, global_batch_size: int, process_index: int, process_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """The test indices and mask a process reads, each [num_batches, local_batch].

    Test examples keep their order; the last global batch is filled up with
    copies of example 0 whose mask is 0, so every process gets the same number
    of batches and the mask sums to num_test over all of them.
    """
    num_batches = -(-num_test // global_batch_size)
    positions = np.arange(num_batches * global_batch_size).reshape(
        num_batches, global_batch_size
    )
    is_real = positions < num_test
    indices = np.where(is_real, positions, 0)
    return (
        _process_slice(indices, process_index, process_count).astype(np.int32),
        _process_slice(is_real.astype(np.float32), process_index, process_count),
    )


def _process_slice(
    global_batches: np.ndarray, process_index: int, process_count: int
) -> np.ndarray:
    local_batch = global_batches.shape[1] // process_count
    start = process_index * local_batch
    return global_batches[:, start : start + local_batch]


def padded_batches(
    split: Split, global_batch_size: int, *, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
    """This process's share of `split`, in order, padded and masked, loaded on the host.

    Yields {"image": pixels [b, H, W, 3], "label": int32 [b], "index": int32
    [b], "mask": float32 [b]} with b = global_batch_size // process_count;
    mask is 1.0 for a real example and 0.0 for padding (copies of example 0).
    """
    check_batch_size(global_batch_size, process_index, process_count)
    indices, masks = padded_test_indices(
        split.num_examples, global_batch_size, process_index, process_count
    )
    return loaded_ahead(split, indices, masks)


def loaded_ahead(
    split: Split, indices: np.ndarray, masks: Optional[np.ndarray]
) -> Iterator[Batch]:
    """Batches of `split` at the rows of `indices`, each loaded while the ones before it are used.

    Yields {"image", "label", "index"} per row, and "mask" (that row of
    `masks`) when masks are given.
    """

    def load(row: int) -> Batch:
        batch = {
            "image": split.load(indices[row]),
            "label": split.labels[indices[row]],
            "index": indices[row].astype(np.int32),
        }
        if masks is not None:
            batch["mask"] = masks[row]
        return batch

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as loader:
        ahead = [loader.submit(load, row) for row in range(min(_PREFETCH_BATCHES, len(indices)))]
        for row in range(len(indices)):
            batch = ahead.pop(0).result()
            if row + _PREFETCH_BATCHES < len(indices):
                ahead.append(loader.submit(load, row + _PREFETCH_BATCHES))
            yield batch


def check_batch_size(global_batch_size: int, process_index: int = 0, process_count: int = 1) -> None:
    """A UserError unless the global batch is at least 1 and splits evenly over the processes (see fmjax.core.batch_size)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
    check_global_batch_size(global_batch_size, process_count=process_count)
