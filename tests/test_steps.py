"""The pure core composes: train_step under jit, vmap and scan; eval_step's sums are exact."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fmjax
from fmjax.core.losses import cross_entropy, mse
from fmjax.core.models import MLP, SeedCNN
from fmjax.core.steps import update_is_finite

IMAGE = (8, 8, 3)


def make_state(seed=0, model=None, tx=None):
    model = model or SeedCNN(num_classes=4, features=4, hidden=16)
    return fmjax.create_train_state(
        jax.random.key(seed), model, tx or optax.adam(1e-2), jnp.zeros((1, *IMAGE))
    )


def make_batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((size, *IMAGE), dtype=np.float32),
        "label": rng.integers(0, 4, size).astype(np.int32),
    }


def test_seed_cnn_infers_fc1_size_from_the_conv_output():
    params = make_state().params
    # 8x8 through a 5x5 VALID conv is 4x4, times 4 features.
    chex.assert_shape(params["fc1"]["kernel"], (4 * 4 * 4, 16))
    chex.assert_shape(params["conv1"]["kernel"], (5, 5, 3, 4))
    chex.assert_shape(params["fc2"]["kernel"], (16, 4))


def test_jitted_train_step_lowers_the_loss():
    state = make_state()
    batch = make_batch()
    step = jax.jit(fmjax.train_step)
    losses = []
    for _ in range(20):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 20
    assert losses[-1] < 0.5 * losses[0]


def test_train_step_matches_a_hand_written_adam_update():
    state = make_state(tx=optax.adam(1e-3))
    batch = make_batch()
    new_state, metrics = jax.jit(fmjax.train_step)(state, batch)

    def loss(params):
        return cross_entropy(state.apply_fn({"params": params}, batch["image"]), batch["label"])

    value, grads = jax.value_and_grad(loss)(state.params)
    # Adam's first step with bias correction moves each weight by lr * g / (|g| + eps').
    expected = jax.tree.map(
        lambda p, g: p - 1e-3 * g / (jnp.abs(g) + 1e-8), state.params, grads
    )
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
    chex.assert_trees_all_close(new_state.params, expected, atol=1e-6)


def test_train_step_vmaps_over_several_seeds():
    keys = jax.random.split(jax.random.key(1), 3)
    model = SeedCNN(num_classes=4, features=4, hidden=16)
    states = jax.vmap(
        lambda k: fmjax.create_train_state(k, model, optax.adam(1e-2), jnp.zeros((1, *IMAGE)))
    )(keys)
    batch = make_batch()
    new_states, metrics = jax.jit(jax.vmap(fmjax.train_step, in_axes=(0, None)))(states, batch)
    chex.assert_shape(metrics["loss"], (3,))
    for i in range(3):
        one = jax.tree.map(lambda x: x[i], states)
        expected, expected_metrics = jax.jit(fmjax.train_step)(one, batch)
        chex.assert_trees_all_close(
            jax.tree.map(lambda x: x[i], new_states.params), expected.params, atol=1e-6
        )
        np.testing.assert_allclose(metrics["loss"][i], expected_metrics["loss"], rtol=1e-6)
    # Different seeds, different models.
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])


def test_train_step_inside_scan_equals_a_python_loop():
    state = make_state()
    batches = [make_batch(seed=i) for i in range(4)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)

    scanned, scan_metrics = jax.jit(lambda s, b: jax.lax.scan(fmjax.train_step, s, b))(
        state, stacked
    )
    looped = state
    step = jax.jit(fmjax.train_step)
    for i, batch in enumerate(batches):
        looped, metrics = step(looped, batch)
        np.testing.assert_allclose(scan_metrics["loss"][i], metrics["loss"], rtol=1e-5)
    chex.assert_trees_all_close(scanned.params, looped.params, atol=1e-6)
    assert int(scanned.step) == 4


def test_masked_examples_do_not_change_the_update():
    state = make_state()
    batch = make_batch(size=6)
    padded = {
        "image": np.concatenate([batch["image"], np.full((2, *IMAGE), 7.0, np.float32)]),
        "label": np.concatenate([batch["label"], np.zeros(2, np.int32)]),
        "mask": np.array([1] * 6 + [0] * 2, np.float32),
    }
    a, _ = jax.jit(fmjax.train_step)(state, batch)
    b, _ = jax.jit(fmjax.train_step)(state, padded)
    chex.assert_trees_all_close(a.params, b.params, atol=1e-6)


@pytest.mark.parametrize("loss_fn", [cross_entropy, mse])
def test_eval_step_sums_over_a_padded_last_batch_equal_numpy(loss_fn):
    state = make_state()
    num_examples, batch_size = 21, 8
    data = make_batch(size=num_examples, seed=3)
    logits = np.asarray(state.apply_fn({"params": state.params}, data["image"]), np.float64)
    labels = data["label"]
    if loss_fn is cross_entropy:
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        per_example = -log_probs[np.arange(num_examples), labels]
    else:
        per_example = ((logits - np.eye(4)[labels]) ** 2).mean(axis=1)
    expected_correct = int((logits.argmax(axis=1) == labels).sum())

    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    confusion = np.zeros((4, 4))
    eval_step = jax.jit(functools.partial(fmjax.eval_step, loss_fn=loss_fn))
    for start in range(0, num_examples, batch_size):
        images = data["image"][start : start + batch_size]
        labels_part = data["label"][start : start + batch_size]
        real = len(labels_part)
        pad = batch_size - real
        batch = {
            "image": np.concatenate([images, np.zeros((pad, *IMAGE), np.float32)]),
            "label": np.concatenate([labels_part, np.zeros(pad, np.int32)]),
            "mask": np.array([1.0] * real + [0.0] * pad, np.float32),
        }
        sums = eval_step(state, batch)
        for key in totals:
            totals[key] += float(sums[key])
        confusion += np.asarray(sums["confusion"])

    assert totals["count"] == num_examples
    assert totals["correct"] == expected_correct
    np.testing.assert_allclose(totals["loss_sum"], per_example.sum(), rtol=1e-5)
    expected_confusion = np.zeros((4, 4))
    np.add.at(expected_confusion, (labels, logits.argmax(axis=1)), 1)
    np.testing.assert_array_equal(confusion, expected_confusion)


def test_mlp_trains_with_the_same_step():
    state = make_state(model=MLP(num_classes=4, hidden=(32, 16)))
    chex.assert_shape(state.params["fc1"]["kernel"], (8 * 8 * 3, 32))
    batch = make_batch()
    step = jax.jit(fmjax.train_step)
    first = None
    for _ in range(10):
        state, metrics = step(state, batch)
        first = first if first is not None else float(metrics["loss"])
    assert float(metrics["loss"]) < first


def test_the_finite_flag_is_false_after_an_overflow_and_optional():
    state = make_state(tx=optax.sgd(1e38))
    batch = make_batch()
    state, metrics = jax.jit(fmjax.train_step)(state, batch)
    state, metrics = jax.jit(fmjax.train_step)(state, batch)
    assert not bool(metrics["finite"])
    _, unchecked = jax.jit(functools.partial(fmjax.train_step, check_finite=False))(make_state(), batch)
    assert set(unchecked) == {"loss", "accuracy"}
    _, checked = jax.jit(fmjax.train_step)(make_state(), batch)
    assert bool(checked["finite"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_micro_batches_give_the_update_of_the_whole_batch(optimizer):
    tx = optax.sgd(0.1) if optimizer == "sgd" else optax.adam(1e-3)
    model = SeedCNN(num_classes=10, hidden=32)
    rng = np.random.default_rng(3)
    batch = {
        "image": jnp.asarray(rng.random((16, 8, 8, 3), np.float32)),
        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }
    whole = micro = fmjax.create_train_state(jax.random.key(0), model, tx, batch["image"][:1])
    whole_step = jax.jit(fmjax.train_step)
    micro_step = jax.jit(functools.partial(fmjax.train_step, grad_accum_steps=4))
    for _ in range(3):
        whole, whole_metrics = whole_step(whole, batch)
        micro, micro_metrics = micro_step(micro, batch)
    # Adam divides by the root of the second moment, which turns the rounding
    # of a near-zero gradient into an update of up to about lr * 1e-3 (here
    # 1.2e-6, on one weight of 16,384); SGD keeps every difference below 1e-6.
    chex.assert_trees_all_close(micro.params, whole.params, atol=1e-6 if optimizer == "sgd" else 2e-6, rtol=0)
    chex.assert_trees_all_close(micro_metrics, whole_metrics, atol=1e-6, rtol=1e-6)
    assert not np.allclose(micro.params["fc1"]["kernel"], jax.jit(fmjax.train_step)(micro, batch)[0].params["fc1"]["kernel"])
    with pytest.raises(ValueError, match="batch of 16 does not split into 3 equal micro-batches"):
        jax.jit(functools.partial(fmjax.train_step, grad_accum_steps=3))(micro, batch)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("leaf, where", [("kernel", (0, 0)), ("kernel", (37, 5)), ("conv", (4, 4, 2, 7)), ("bias", (3,))])
def test_the_finite_flag_finds_one_bad_value_in_any_leaf(bad, leaf, where):
    rng = np.random.default_rng(0)
    grads = {
        "kernel": rng.normal(size=(48, 16)).astype(np.float32),
        "conv": rng.normal(size=(5, 5, 3, 8)).astype(np.float32),
        "bias": rng.normal(size=(16,)).astype(np.float32),
    }
    flag = jax.jit(update_is_finite)
    assert bool(flag(jnp.float32(1.0), grads, {}))
    grads[leaf][where] = bad
    assert not bool(flag(jnp.float32(1.0), grads, {}))


def test_the_finite_flag_sees_opposite_infinities_and_a_nan_loss():
    grads = {"kernel": np.zeros((4, 4), np.float32)}
    grads["kernel"][0, 0], grads["kernel"][3, 3] = np.inf, -np.inf
    assert not bool(update_is_finite(jnp.float32(0.0), grads, {}))
    assert not bool(update_is_finite(jnp.float32(np.nan), {"kernel": np.zeros((4, 4), np.float32)}, {}))
    assert bool(update_is_finite(jnp.float32(0.0), {"empty": np.zeros((4, 0), np.float32)}, {}))
