"""Training and evaluation over the data where it lies: on the devices, in host memory, or streamed."""

import dataclasses
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

from fmjax.data import Dataset
from fmjax.data.split import in_memory, split_pixels
from fmjax.parallel.interface import DataParallel

# Steps dispatched ahead of the one the host waits for, when batches come from
# the host. Enough to keep devices busy; unbounded queues of collectives can
# deadlock XLA's CPU runtime when several fake devices share few cores.
MAX_STEPS_IN_FLIGHT = 2


def _this_process() -> dict[str, int]:
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def test_metrics(totals: dict[str, Any]) -> dict[str, Any]:
    """Loss, accuracy and confusion matrix from the eval sums (fmjax.core.steps.eval_step) over a whole test split.

    Returns:
      {"loss", "accuracy", "num_examples", "confusion_matrix" (numpy
      [num_classes, num_classes], rows are true labels)}.
    """
    totals = {k: np.asarray(v, np.float64) for k, v in totals.items()}
    count = totals["count"]
    return {
        "loss": float(totals["loss_sum"] / count),
        "accuracy": float(totals["correct"] / count),
        "num_examples": int(count),
        "confusion_matrix": totals["confusion"].astype(np.int64),
    }


def member_test_metrics(totals: dict[str, Any], population: bool) -> Any:
    """test_metrics, or for a population (a leading member axis on the sums) a list of them, one per member."""
    if not population:
        return test_metrics(totals)
    return [test_metrics({k: v[index] for k, v in totals.items()}) for index in range(len(totals["count"]))]


def evaluate(
    parallel: DataParallel, device_state: Any, dataset: Dataset, batch_size: int, population: bool = False
) -> Any:
    """test_metrics over every test example exactly once, from batches loaded on the host (see member_test_metrics)."""
    totals = None
    for batch in dataset.test_batches(batch_size, **_this_process()):
        sums = jax.device_get(parallel.eval_step(device_state, parallel.put_batch(batch)))
        sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
    return member_test_metrics(totals, population)


@dataclasses.dataclass
class PlacedData:
    """A data set's splits where training reads them (see fmjax.data.cache_placement).

    Attributes:
      dataset: the data set; with "host" its splits are read from memory.
      parallel: the compiled steps that read the data.
      placement: "device" (both splits on every device, each batch gathered
        there inside the compiled loop), "host" (both splits in host memory)
        or "none" (loaded from the source batch by batch).
      train, test: the devices' copies of the splits, with "device".
      member_seeds: a population's seeds: each member's batches come in its
        own seed's order on the devices; streamed batches come in the data
        set's order (config.seed's) for every member.
    """

    dataset: Dataset
    parallel: DataParallel
    placement: str
    train: Any = None
    test: Any = None
    member_seeds: Optional[list[int]] = None
    _epoch: Optional[int] = None
    _epoch_batches: Any = None

    def run_steps(
        self, device_state: Any, step: int, count: int, batch_size: int
    ) -> tuple[Any, list[dict]]:
        """Runs steps step .. step + count - 1 (all in one epoch) and returns the state and each step's host metrics."""
        steps_per_epoch = self.dataset.steps_per_epoch(batch_size)
        epoch, batch_index = divmod(step, steps_per_epoch)
        batches = self._batches_of(epoch, batch_index, batch_size)
        if self.placement == "device":
            device_state, metrics = self.parallel.train_loop(
                device_state, self.train, batches, epoch, batch_index, count
            )
            metrics = jax.device_get(metrics)
            return device_state, [
                {k: v[i] for k, v in metrics.items()} for i in range(batch_index, batch_index + count)
            ]
        host_metrics = []
        for _ in range(count):
            device_state, metrics = self.parallel.train_step(
                device_state, self.parallel.put_batch(next(batches)), epoch
            )
            host_metrics.append(metrics)
            if len(host_metrics) > MAX_STEPS_IN_FLIGHT:
                jax.block_until_ready(host_metrics[-MAX_STEPS_IN_FLIGHT - 1])
        return device_state, jax.device_get(host_metrics)

    def evaluate(self, device_state: Any, batch_size: int) -> Any:
        """test_metrics over the test split (a list, one per member, for a population), from the devices' copy if there is one."""
        population = self.member_seeds is not None
        if self.placement != "device":
            return evaluate(self.parallel, device_state, self.dataset, batch_size, population)
        indices, masks = self.dataset.test_indices(batch_size, **_this_process())
        sums = self.parallel.eval_loop(
            device_state, self.test, self.parallel.put_indices(indices), self.parallel.put_indices(masks)
        )
        return member_test_metrics(jax.device_get(sums), population)

    def _batches_of(self, epoch: int, batch_index: int, batch_size: int) -> Any:
        """The epoch's order on the devices, or a host iterator positioned at `batch_index`."""
        if self._epoch != epoch:
            self._epoch = epoch
            if self.placement == "device":
                self._epoch_batches = self.parallel.put_indices(self._train_indices(epoch, batch_size))
            else:
                self._epoch_batches = iter(
                    self.dataset.train_batches(epoch, batch_size, start_batch=batch_index, **_this_process())
                )
        return self._epoch_batches

    def _train_indices(self, epoch: int, batch_size: int) -> np.ndarray:
        """[rows, local batch] of the epoch's order; [rows, local batch, member] for a population."""
        if self.member_seeds is None:
            return self.dataset.train_indices(epoch, batch_size, **_this_process())
        orders = [
            dataclasses.replace(self.dataset, seed=seed).train_indices(epoch, batch_size, **_this_process())
            for seed in self.member_seeds
        ]
        return np.stack(orders, axis=-1)


def place_data(
    dataset: Dataset,
    parallel: DataParallel,
    placement: str,
    report: Callable[[str], None],
    member_seeds: Optional[list[int]] = None,
) -> PlacedData:
    """Loads both splits once into host memory or onto the devices, as `placement` says."""
    if placement == "none":
        return PlacedData(dataset, parallel, "none", member_seeds=member_seeds)
    started = time.perf_counter()
    if placement == "device":
        placed = PlacedData(
            dataset,
            parallel,
            "device",
            parallel.put_data(split_pixels(dataset.train_split)),
            parallel.put_data(split_pixels(dataset.test_split)),
            member_seeds,
        )
    else:
        dataset = dataclasses.replace(
            dataset, train_split=in_memory(dataset.train_split), test_split=in_memory(dataset.test_split)
        )
        placed = PlacedData(dataset, parallel, "host", member_seeds=member_seeds)
    report(
        f"{dataset.num_train + dataset.num_test} images loaded into {placement} memory "
        f"({dataset.pixel_bytes() / 2**20:.1f} MiB) in {time.perf_counter() - started:.1f} s"
    )
    return placed
