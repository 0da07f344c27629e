"""The models: shapes, the config factory, mixed precision and the ResNet's batch statistics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fmjax
from fmjax.config import base_config
from fmjax.core.losses import cross_entropy
from fmjax.core.models import (
    MLP,
    ResNet,
    SeedCNN,
    ValidConv,
    create_model,
    matmul_kernel_in_front,
)
from fmjax.errors import UserError
from fmjax.parallel.data_parallel import make_data_parallel


def model_config(**overrides):
    config = base_config().model
    config.update(overrides)
    return config


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_seed_cnn_activations_change_the_output(activation):
    model = create_model(model_config(activation=activation, hidden=8), num_classes=3)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    images = jnp.linspace(0, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
    logits = model.apply({"params": params}, images)
    chex.assert_shape(logits, (2, 3))
    relu = SeedCNN(3, hidden=8).apply({"params": params}, images)
    assert np.allclose(logits, relu) == (activation == "relu")


def test_conv_as_shifted_windows_is_lax_conv_with_the_same_params_and_gradients():
    images = jax.random.uniform(jax.random.key(1), (3, 11, 9, 3))
    labels = jnp.array([0, 2, 1])
    native, slices = (
        SeedCNN(3, features=4, kernel_size=3, hidden=8, conv_implementation=impl)
        for impl in ("native", "slices")
    )
    params = native.init(jax.random.key(0), images)
    # Same parameter tree, initialised to the same values.
    chex.assert_trees_all_equal(params, slices.init(jax.random.key(0), images))
    reference = jax.lax.conv_general_dilated(
        images, params["params"]["conv1"]["kernel"], (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + params["params"]["conv1"]["bias"]
    conv_params = {"params": params["params"]["conv1"]}
    chex.assert_trees_all_close(
        ValidConv(4, 3, "slices").apply(conv_params, images), reference, rtol=1e-5, atol=1e-6
    )

    def loss(model, params):
        return cross_entropy(model.apply(params, images), labels)

    chex.assert_trees_all_close(
        jax.grad(lambda p: loss(slices, p))(params),
        jax.grad(lambda p: loss(native, p))(params),
        rtol=1e-5, atol=1e-6,
    )
    chex.assert_trees_all_close(
        slices.apply(params, images), native.apply(params, images), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(UserError, match="config.model.conv is 'fft'"):
        create_model(model_config(conv="fft"), 10)


def test_the_kernel_in_front_matmul_is_the_matmul_in_value_gradient_and_forward_mode():
    x = jax.random.normal(jax.random.key(0), (5, 12))
    kernel = jax.random.normal(jax.random.key(1), (12, 7))
    x_dot = jax.random.normal(jax.random.key(2), (5, 12))
    kernel_dot = jax.random.normal(jax.random.key(3), (12, 7))
    plain = lambda x, kernel: x @ kernel  # noqa: E731
    np.testing.assert_array_equal(matmul_kernel_in_front(x, kernel), plain(x, kernel))

    def loss(matmul):
        return lambda x, kernel: jnp.sum(jnp.tanh(matmul(x, kernel)) ** 2)

    grads = jax.jit(jax.grad(loss(matmul_kernel_in_front), argnums=(0, 1)))(x, kernel)
    chex.assert_trees_all_close(grads, jax.grad(loss(plain), argnums=(0, 1))(x, kernel), rtol=1e-5, atol=1e-6)
    tangent = jax.jvp(matmul_kernel_in_front, (x, kernel), (x_dot, kernel_dot))[1]
    chex.assert_trees_all_close(tangent, x_dot @ kernel + x @ kernel_dot, rtol=1e-5, atol=1e-5)
    hessian = jax.hessian(loss(matmul_kernel_in_front))(x, kernel)
    chex.assert_trees_all_close(hessian, jax.hessian(loss(plain))(x, kernel), rtol=1e-4, atol=1e-5)
    per_example = jax.vmap(jax.grad(loss(matmul_kernel_in_front), argnums=1), in_axes=(0, None))(x[:, None], kernel)
    chex.assert_trees_all_close(per_example.sum(0), grads[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", [SeedCNN(3, features=4, kernel_size=3, hidden=8), MLP(3, hidden=(16, 8))])
def test_the_seed_models_train_as_with_flaxs_own_dense(model):
    images = jax.random.uniform(jax.random.key(1), (3, 9, 9, 3))
    labels = jnp.array([0, 2, 1])
    kernel_in_front, plain = (model.clone(dense_implementation=impl) for impl in ("kernel_in_front", "plain"))
    params = plain.init(jax.random.key(0), images)
    chex.assert_trees_all_equal(params, kernel_in_front.init(jax.random.key(0), images))

    def grads(model):
        return jax.jit(jax.grad(lambda p: cross_entropy(model.apply(p, images), labels)))(params)

    chex.assert_trees_all_close(grads(kernel_in_front), grads(plain), rtol=1e-5, atol=1e-6)
    # On CPU "auto" is kernel_in_front: the same program.
    chex.assert_trees_all_equal(grads(model), grads(kernel_in_front))
    jaxpr = jax.make_jaxpr(lambda p: kernel_in_front.apply(p, images))(params)
    assert "name=matmul_kernel_in_front" in str(jaxpr)
    assert "name=matmul_kernel_in_front" not in str(jax.make_jaxpr(lambda p: plain.apply(p, images))(params))
    with pytest.raises(UserError, match="config.model.dense is 'fast'; use one of auto, plain, kernel_in_front"):
        create_model(model_config(dense="fast"), 10)


def test_unknown_model_choices_are_user_errors():
    with pytest.raises(UserError, match="config.model.name is 'vgg'"):
        create_model(model_config(name="vgg"), 10)
    with pytest.raises(UserError, match="config.model.activation is 'gelu'"):
        create_model(model_config(activation="gelu"), 10)
    with pytest.raises(UserError, match="config.model.dtype is 'float16'"):
        create_model(model_config(dtype="float16"), 10)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_params():
    model = create_model(model_config(dtype="bfloat16", hidden=16), 10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits = model.apply(variables, jnp.ones((2, 8, 8, 3)))
    assert logits.dtype == jnp.bfloat16
    full = create_model(model_config(hidden=16), 10).apply(variables, jnp.ones((2, 8, 8, 3)))
    np.testing.assert_allclose(logits.astype(np.float32), full, atol=0.05, rtol=0.05)


def tiny_resnet_state():
    model = ResNet(num_classes=4, stage_sizes=(1, 1), width=4)
    return fmjax.create_train_state(
        jax.random.key(0), model, optax.adam(1e-2), jnp.zeros((1, 8, 8, 3))
    )


def batches(count, size=16):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.random((size, 8, 8, 3), dtype=np.float32) + (np.arange(size) % 4)[:, None, None, None] * 0.5,
            "label": (np.arange(size) % 4).astype(np.int32),
        }
        for _ in range(count)
    ]


def test_resnet_batch_stats_live_in_the_state_and_update():
    state = tiny_resnet_state()
    assert state.batch_stats, "the ResNet's running statistics belong in the state"
    step = jax.jit(fmjax.train_step)
    first = None
    for batch in batches(15):
        new_state, metrics = step(state, batch)
        first = first if first is not None else float(metrics["loss"])
        assert not jax.tree.all(
            jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_state.batch_stats, state.batch_stats)
        )
        state = new_state
    assert float(metrics["loss"]) < first
    sums = jax.jit(fmjax.eval_step)(state, batches(1, size=8)[0])
    assert float(sums["count"]) == 8.0


@pytest.mark.parametrize("mode", ["pmap", "jit"])
def test_resnet_batch_stats_are_averaged_across_devices(mode):
    parallel = make_data_parallel(mode, cross_entropy)
    batch = batches(1)[0]
    device_state, metrics = parallel.train_step(
        parallel.put_state(tiny_resnet_state()), parallel.put_batch(batch)
    )
    assert np.isfinite(float(metrics["loss"]))
    for leaf in jax.tree.leaves(device_state.batch_stats):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(shards) == 8
        for shard in shards[1:]:
            np.testing.assert_array_equal(shard, shards[0])
    # The stem's BatchNorm sees the same inputs everywhere, so its running mean
    # after one step is the whole batch's: the average of 8 equal devices' means.
    state = jax.device_get(parallel.get_state(device_state))
    single, _ = jax.jit(fmjax.train_step)(tiny_resnet_state(), batch)
    np.testing.assert_allclose(
        state.batch_stats["BatchNorm_0"]["mean"], single.batch_stats["BatchNorm_0"]["mean"], atol=1e-5
    )
    assert np.abs(single.batch_stats["BatchNorm_0"]["mean"]).max() > 0
