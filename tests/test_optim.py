"""Optimizers, schedules, clipping and label smoothing do what the config says."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fmjax.config import base_config
from fmjax.core.losses import cross_entropy, get_loss, mse
from fmjax.core.optim import create_learning_rate_schedule, create_optimizer
from fmjax.errors import UserError


def config(**overrides):
    config = base_config()
    for key, value in overrides.items():
        target = config
        *groups, name = key.split(".")
        for group in groups:
            target = target[group]
        target[name] = value
    return config


def one_update(tx, grads, params):
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_constant_schedule_is_the_seeds_learning_rate():
    schedule = create_learning_rate_schedule(config())
    assert [float(schedule(s)) for s in (0, 100, 10_000)] == [1e-3] * 3


def test_warmup_cosine_rises_then_decays_to_the_end_rate():
    c = config(**{"num_epochs": 10, "schedule.name": "warmup_cosine", "schedule.warmup_epochs": 2.0,
                  "schedule.end_learning_rate": 1e-5})
    schedule = create_learning_rate_schedule(c, steps_per_epoch=10)
    np.testing.assert_allclose(float(schedule(0)), 0.0)
    np.testing.assert_allclose(float(schedule(10)), 0.5e-3, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(20)), 1e-3, rtol=1e-6)
    midway = 20 + (100 - 20) // 2
    np.testing.assert_allclose(float(schedule(midway)), 1e-5 + (1e-3 - 1e-5) / 2, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(100)), 1e-5, rtol=1e-6)


def test_step_decay_multiplies_at_each_boundary():
    c = config(**{"schedule.name": "step", "schedule.decay_epochs": (2, 4), "schedule.decay_factor": 0.1})
    schedule = create_learning_rate_schedule(c, steps_per_epoch=5)
    rates = [float(schedule(s)) for s in (0, 9, 10, 19, 20, 30)]
    np.testing.assert_allclose(rates, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)


def test_sgd_is_gradient_descent_and_momentum_accumulates():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, 0.25])}
    tx = create_optimizer(config(**{"optimizer.name": "sgd", "learning_rate": 0.1}))
    chex.assert_trees_all_close(one_update(tx, grads, params), {"w": jnp.array([-0.05, -0.025])})
    tx = create_optimizer(config(**{"optimizer.name": "sgd", "learning_rate": 0.1, "optimizer.momentum": 0.9}))
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    updates, _ = tx.update(grads, state, params)
    chex.assert_trees_all_close(updates, {"w": -0.1 * 1.9 * grads["w"]})


def test_weight_decay_adds_l2_to_the_gradient():
    params = {"w": jnp.array([2.0])}
    tx = create_optimizer(config(**{"optimizer.name": "sgd", "learning_rate": 1.0, "optimizer.weight_decay": 0.1}))
    chex.assert_trees_all_close(one_update(tx, {"w": jnp.array([0.0])}, params), {"w": jnp.array([-0.2])})


def test_gradient_clipping_caps_the_global_norm():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}  # global norm 5
    tx = create_optimizer(config(**{"optimizer.name": "sgd", "learning_rate": 1.0, "grad_clip_norm": 1.0}))
    updates = one_update(tx, grads, params)
    norm = optax.tree.norm(updates)
    np.testing.assert_allclose(float(norm), 1.0, rtol=1e-6)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -g / 5.0, grads))


def test_label_smoothing_moves_weight_to_the_other_classes():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    labels = jnp.array([0])
    log_probs = jax.nn.log_softmax(logits)[0]
    expected = -(0.9 + 0.1 / 3) * log_probs[0] - (0.1 / 3) * (log_probs[1] + log_probs[2])
    np.testing.assert_allclose(float(get_loss("cross_entropy", 0.1)(logits, labels, None)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(get_loss("cross_entropy")(logits, labels, None)), -log_probs[0], rtol=1e-6)
    targets = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    np.testing.assert_allclose(
        float(mse(logits, labels, label_smoothing=0.1)), np.mean((np.asarray(logits[0]) - targets) ** 2), rtol=1e-6
    )
    assert get_loss("cross_entropy") is cross_entropy


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optimizer.name": "rmsprop"}, "config.optimizer.name is 'rmsprop'"),
        ({"schedule.name": "linear"}, "config.schedule.name is 'linear'"),
        ({"schedule.name": "warmup_cosine", "schedule.warmup_epochs": 20.0}, "leaves no step to decay"),
    ],
)
def test_bad_optimizer_settings_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        create_optimizer(config(**overrides), steps_per_epoch=10)


def test_bad_loss_settings_are_user_errors():
    with pytest.raises(UserError, match="config.loss is 'hinge'"):
        get_loss("hinge")
    with pytest.raises(UserError, match="config.label_smoothing is 1.5"):
        get_loss("cross_entropy", 1.5)
