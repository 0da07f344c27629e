"""FSDP in the jit form (config.shard_params): each of 8 devices holds 1/8 of the large arrays, training unchanged."""

import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from tiny_training import STEPS, global_batches, tiny_state

from fmjax.core.losses import cross_entropy
from fmjax.parallel.data_parallel import make_data_parallel
from fmjax.parallel.interface import DATA_AXIS
from fmjax.parallel.mesh import abstract_state, fsdp_partition_spec
from fmjax.run import checkpoint as ckpt

# fc1's kernel is [4*4*4, 16] = 1024 elements; conv1's (300) and fc2's (64) are smaller.
MIN_SIZE = 1000
FC1_KERNEL = (64, 16)


def train(shard_params):
    parallel = make_data_parallel(
        "jit", cross_entropy, shard_params=shard_params, shard_params_min_size=MIN_SIZE
    )
    device_state = parallel.put_state(tiny_state())
    losses, sums = [], None
    for batch in global_batches():
        device_state, metrics = parallel.train_step(device_state, parallel.put_batch(batch))
        losses.append(float(metrics["loss"]))
    sums = jax.device_get(parallel.eval_step(device_state, parallel.put_batch(global_batches()[0])))
    return parallel, device_state, losses, sums


@pytest.fixture(scope="module")
def replicated_run():
    return train(shard_params=False)


@pytest.fixture(scope="module")
def sharded_run():
    return train(shard_params=True)


def shard_shapes(array):
    return [shard.data.shape for shard in array.addressable_shards]


def test_each_device_holds_an_eighth_of_fc1_and_of_its_adam_moments(sharded_run):
    _, state, _, _ = sharded_run
    adam = state.opt_state[0]
    for array in (state.params["fc1"]["kernel"], adam.mu["fc1"]["kernel"], adam.nu["fc1"]["kernel"]):
        assert array.shape == FC1_KERNEL
        assert shard_shapes(array) == [(64, 2)] * 8
        # Eight different slices, not eight copies.
        assert len({str(shard.index) for shard in array.addressable_shards}) == 8
    # Small arrays stay whole on every device.
    assert shard_shapes(state.params["fc2"]["kernel"]) == [(16, 4)] * 8
    assert shard_shapes(state.params["conv1"]["kernel"]) == [(5, 5, 3, 4)] * 8


def test_sharded_training_matches_replicated(sharded_run, replicated_run):
    _, sharded, sharded_losses, sharded_sums = sharded_run
    _, replicated, replicated_losses, replicated_sums = replicated_run
    assert int(sharded.step) == STEPS
    chex.assert_trees_all_close(
        jax.device_get(sharded.params), jax.device_get(replicated.params), atol=1e-5
    )
    chex.assert_trees_all_close(
        jax.device_get(sharded.opt_state), jax.device_get(replicated.opt_state), atol=1e-5
    )
    np.testing.assert_allclose(sharded_losses, replicated_losses, rtol=1e-5)
    assert sharded_sums["correct"] == replicated_sums["correct"]
    np.testing.assert_allclose(sharded_sums["loss_sum"], replicated_sums["loss_sum"], rtol=1e-5)


def test_a_sharded_state_saves_and_restores_into_its_shards(sharded_run, tmp_path):
    parallel, device_state, _, _ = sharded_run
    manager = ckpt.checkpoint_manager(str(tmp_path))
    ckpt.save_checkpoint(manager, parallel.get_state(device_state), {"epoch": 1, "next_batch": 0})
    manager.wait_until_finished()
    target = abstract_state(tiny_state, parallel.state_sharding)
    assert target.params["fc1"]["kernel"].sharding.spec == PartitionSpec(None, DATA_AXIS)
    restored, _ = ckpt.restore_checkpoint(manager, STEPS, target)
    assert shard_shapes(restored.params["fc1"]["kernel"]) == [(64, 2)] * 8
    assert shard_shapes(restored.opt_state[0].mu["fc1"]["kernel"]) == [(64, 2)] * 8
    chex.assert_trees_all_equal(jax.device_get(restored.params), jax.device_get(device_state.params))


@pytest.mark.parametrize(
    "shape, min_size, spec",
    [
        ((64, 16), 1000, PartitionSpec(None, DATA_AXIS)),  # a kernel: its output features
        ((64, 12), 100, PartitionSpec(DATA_AXIS, None)),  # outputs do not divide: inputs
        ((16,), 1000, PartitionSpec()),  # small: replicated
        ((5, 5, 3, 4), 100, PartitionSpec()),  # no dimension divides by 8: replicated
        ((), 0, PartitionSpec()),  # a scalar (Adam's step count)
    ],
)
def test_fsdp_splits_the_last_dimension_that_divides(shape, min_size, spec):
    assert fsdp_partition_spec(shape, 8, min_size) == spec
