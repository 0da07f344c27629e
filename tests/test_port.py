"""fmjax.tools.port against the seed's PyTorch models: same logits, loss, gradients and Adam steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fmjax.core.losses import cross_entropy
from fmjax.core.models import MLP, SeedCNN
from fmjax.tools.port import chw_rows_to_hwc, from_torch, hwc_rows_to_chw, to_torch

# Small sizes keep the file fast; fc1 still sees a real 8x8x32 conv output.
IMAGE_SIZE = 12
HIDDEN = 32
NUM_CLASSES = 10
BATCH = 4
TOL = 1e-5


@pytest.fixture(scope="module")
def torch():
    """torch set up for reproducible float32 on CPU; the tests skip without it."""
    torch = pytest.importorskip("torch", reason="torch is needed to compare fmjax with the seed")
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="module")
def torch_reference(torch):
    """The seed's torch models (importing needs torch)."""
    from benchmarks import torch_reference

    return torch_reference


def _images(seed: int, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> np.ndarray:
    """A float32 NHWC batch in [0, 1], as ToTensor gives."""
    return np.random.default_rng(seed).random((BATCH, height, width, 3), dtype=np.float32)


def _labels(seed: int) -> np.ndarray:
    """Integer class labels [B] for batch `seed`."""
    return np.random.default_rng(seed + 1000).integers(0, NUM_CLASSES, BATCH)


def _nchw(torch, images: np.ndarray):
    """The torch view of an NHWC batch: NCHW, as the seed's models take it."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _max_diff(tree_a, tree_b) -> float:
    """The largest absolute difference between matching leaves of two pytrees."""
    diffs = jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))), tree_a, tree_b)
    return float(max(jax.tree.leaves(diffs)))


def _seed_cnn(torch, torch_reference):
    """The seed's Net with fixed initial weights, and the SeedCNN it ports to."""
    torch.manual_seed(0)
    net = torch_reference.Net(NUM_CLASSES, image_size=IMAGE_SIZE, hidden=HIDDEN)
    return net, SeedCNN(NUM_CLASSES, hidden=HIDDEN)


def test_cnn_logits_match(torch, torch_reference):
    net, model = _seed_cnn(torch, torch_reference)
    params = from_torch(net.state_dict(), IMAGE_SIZE)
    images = _images(0)
    expected = net(_nchw(torch, images)).detach().numpy()
    logits = model.apply({"params": params}, jnp.asarray(images))
    np.testing.assert_allclose(logits, expected, atol=TOL, rtol=0)


def test_cnn_params_have_flax_shapes(torch, torch_reference):
    net, model = _seed_cnn(torch, torch_reference)
    params = from_torch(net.state_dict(), IMAGE_SIZE)
    init = model.init(jax.random.PRNGKey(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))["params"]
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, dict(init))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))


def test_cnn_loss_and_grads_match(torch, torch_reference):
    net, model = _seed_cnn(torch, torch_reference)
    params = from_torch(net.state_dict(), IMAGE_SIZE)
    images, labels = _images(1), _labels(1)

    torch_loss = torch.nn.CrossEntropyLoss()(net(_nchw(torch, images)), torch.from_numpy(labels))
    torch_loss.backward()
    torch_grads = from_torch({name: p.grad for name, p in net.named_parameters()}, IMAGE_SIZE)

    def loss_fn(p):
        return cross_entropy(model.apply({"params": p}, jnp.asarray(images)), jnp.asarray(labels))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    np.testing.assert_allclose(loss, torch_loss.item(), atol=TOL, rtol=0)
    assert _max_diff(grads, torch_grads) < TOL


def test_cnn_adam_steps_match(torch, torch_reference):
    net, model = _seed_cnn(torch, torch_reference)
    params = from_torch(net.state_dict(), IMAGE_SIZE)
    torch_opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tx = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8)
    opt_state = tx.init(params)

    @jax.jit
    def step(p, state, images, labels):
        grads = jax.grad(lambda q: cross_entropy(model.apply({"params": q}, images), labels))(p)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    for seed in range(5):
        images, labels = _images(seed), _labels(seed)
        torch_opt.zero_grad()
        torch.nn.CrossEntropyLoss()(net(_nchw(torch, images)), torch.from_numpy(labels)).backward()
        torch_opt.step()
        params, opt_state = step(params, opt_state, jnp.asarray(images), jnp.asarray(labels))

    assert _max_diff(params, from_torch(net.state_dict(), IMAGE_SIZE)) < TOL


def test_mlp_logits_match_on_non_square_images(torch, torch_reference):
    # Non-square images catch a permutation that swaps height and width.
    height, width = 6, 10
    torch.manual_seed(0)
    net = torch_reference.MLP(NUM_CLASSES, in_features=3 * height * width, hidden=(HIDDEN, 16))
    params = from_torch(net.state_dict(), (height, width))
    images = _images(2, height, width)
    expected = net(_nchw(torch, images)).detach().numpy()
    logits = MLP(NUM_CLASSES, hidden=(HIDDEN, 16)).apply({"params": params}, jnp.asarray(images))
    np.testing.assert_allclose(logits, expected, atol=TOL, rtol=0)


def test_to_torch_loads_into_the_seed_net(torch, torch_reference):
    model = SeedCNN(NUM_CLASSES, hidden=HIDDEN)
    images = _images(3)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(images))["params"]
    net = torch_reference.Net(NUM_CLASSES, image_size=IMAGE_SIZE, hidden=HIDDEN)
    state_dict = to_torch(params, IMAGE_SIZE)
    net.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()})
    expected = model.apply({"params": params}, jnp.asarray(images))
    logits = net(_nchw(torch, images)).detach().numpy()
    np.testing.assert_allclose(logits, expected, atol=TOL, rtol=0)


def _net_state_dict(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random arrays shaped as the seed's Net at IMAGE_SIZE (8x8 conv output)."""
    shapes = {
        "conv1.weight": (32, 3, 5, 5),
        "conv1.bias": (32,),
        "fc1.weight": (HIDDEN, 32 * 8 * 8),
        "fc1.bias": (HIDDEN,),
        "fc2.weight": (NUM_CLASSES, HIDDEN),
        "fc2.bias": (NUM_CLASSES,),
    }
    return {key: rng.standard_normal(shape, dtype=np.float32) for key, shape in shapes.items()}


def test_round_trip_is_exact():
    rng = np.random.default_rng(0)
    net_sd = _net_state_dict(rng)
    mlp_sd = {
        "fc1.weight": rng.standard_normal((HIDDEN, 3 * 6 * 10), dtype=np.float32),
        "fc1.bias": rng.standard_normal(HIDDEN, dtype=np.float32),
        "fc2.weight": rng.standard_normal((NUM_CLASSES, HIDDEN), dtype=np.float32),
        "fc2.bias": rng.standard_normal(NUM_CLASSES, dtype=np.float32),
    }
    for sd, size in ((net_sd, IMAGE_SIZE), (mlp_sd, (6, 10))):
        back = to_torch(from_torch(sd, size), size)
        assert back.keys() == sd.keys()
        for key in sd:
            np.testing.assert_array_equal(back[key], sd[key])


def test_row_permutation_moves_channel_last():
    # Column (c, h, w) of the torch weight must land on row (h, w, c) of the kernel.
    channels, height, width = 2, 3, 4
    weight = np.arange(5 * channels * height * width, dtype=np.float32).reshape(5, -1)
    kernel = chw_rows_to_hwc(weight, channels, height, width)
    c, h, w = 1, 2, 3
    np.testing.assert_array_equal(
        kernel[(h * width + w) * channels + c], weight[:, (c * height + h) * width + w]
    )
    np.testing.assert_array_equal(hwc_rows_to_chw(kernel, channels, height, width), weight)


@pytest.mark.parametrize(
    "change, image_size, key",
    [
        (lambda sd: sd, 16, "fc1.weight"),  # the seed's 224-vs-220 kind of mistake
        (lambda sd: {k: v for k, v in sd.items() if k != "fc2.bias"}, IMAGE_SIZE, "fc2.bias"),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, IMAGE_SIZE, "module."),
        (lambda sd: {**sd, "conv1.bias": sd["conv1.bias"][:3]}, IMAGE_SIZE, "conv1.bias"),
    ],
)
def test_mismatch_names_the_key(change, image_size, key):
    sd = change(_net_state_dict(np.random.default_rng(0)))
    with pytest.raises(ValueError, match=key):
        from_torch(sd, image_size)
