"""One device, pmap on 8 and jit on 8 fake CPU devices give the same params and the same sums."""

import chex
import jax
import numpy as np
import pytest
from tiny_training import GLOBAL_BATCH, STEPS, global_batches, tiny_state

import fmjax
from fmjax.config import base_config
from fmjax.core.losses import cross_entropy
from fmjax.errors import UserError
from fmjax.parallel.data_parallel import make_data_parallel, parallel_from_config


@pytest.fixture(scope="module")
def single_device_run():
    state = tiny_state()
    step = jax.jit(fmjax.train_step)
    losses = []
    for batch in global_batches():
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.parametrize("mode", ["pmap", "jit"])
def test_eight_devices_match_one(mode, single_device_run):
    assert jax.device_count() == 8
    expected_state, expected_losses = single_device_run
    parallel = make_data_parallel(mode, cross_entropy)
    device_state = parallel.put_state(tiny_state())
    losses = []
    for batch in global_batches():
        device_state, metrics = parallel.train_step(device_state, parallel.put_batch(batch))
        losses.append(float(metrics["loss"]))
    state = jax.device_get(parallel.get_state(device_state))
    assert int(state.step) == STEPS
    chex.assert_trees_all_close(state.params, expected_state.params, atol=1e-5)
    chex.assert_trees_all_close(state.opt_state, expected_state.opt_state, atol=1e-5)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)


@pytest.mark.parametrize("mode", ["pmap", "jit"])
def test_parallel_eval_sums_every_example_once(mode):
    parallel = make_data_parallel(mode, cross_entropy)
    state = tiny_state()
    batch = global_batches()[0]
    batch["mask"] = np.array([1.0] * 11 + [0.0] * 5, np.float32)
    sums = jax.device_get(parallel.eval_step(parallel.put_state(state), parallel.put_batch(batch)))
    expected = jax.device_get(jax.jit(fmjax.eval_step)(state, batch))
    assert float(sums["count"]) == 11.0
    assert float(sums["correct"]) == float(expected["correct"])
    np.testing.assert_allclose(sums["loss_sum"], expected["loss_sum"], rtol=1e-5)
    np.testing.assert_array_equal(sums["confusion"], expected["confusion"])


def test_an_unknown_parallel_mode_is_a_user_error():
    with pytest.raises(UserError, match="config.parallel is 'auto'"):
        make_data_parallel("auto", cross_entropy)


def test_shard_params_with_pmap_is_a_user_error():
    with pytest.raises(UserError, match=r"config.shard_params needs config.parallel='jit'"):
        make_data_parallel("pmap", cross_entropy, shard_params=True)


def test_a_config_whose_batch_does_not_divide_by_the_devices_is_a_user_error():
    config = base_config()
    config.batch_size = 12
    with pytest.raises(UserError, match=r"config.batch_size=12 does not divide by the 8 devices"):
        parallel_from_config(config)


def test_label_smoothing_trains_but_evaluation_reports_the_plain_loss():
    config = base_config()
    config.batch_size = GLOBAL_BATCH
    config.label_smoothing = 0.2
    parallel = parallel_from_config(config)
    state = tiny_state()
    batch = global_batches()[0]
    logits = state.apply_fn({"params": state.params}, batch["image"])
    # The step donates what put_state gives, which may share the state's buffers.
    _, metrics = parallel.train_step(parallel.put_state(tiny_state()), parallel.put_batch(batch))
    np.testing.assert_allclose(
        float(metrics["loss"]), float(cross_entropy(logits, batch["label"], label_smoothing=0.2)), rtol=1e-5
    )
    sums = parallel.eval_step(
        parallel.put_state(state), parallel.put_batch({**batch, "mask": np.ones(GLOBAL_BATCH, np.float32)})
    )
    np.testing.assert_allclose(
        float(sums["loss_sum"]) / GLOBAL_BATCH, float(cross_entropy(logits, batch["label"])), rtol=1e-5
    )
