"""Flax Linen models: the seed's CNN and its fully connected "DNN".

Both take NHWC float images and return unnormalised logits. `init` and
`apply` are the pure functions research code composes with jit, vmap and grad.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fmjax.errors import UserError

# The seed's section 4 names these three activations.
ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": nn.tanh,
}


def get_activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The activation function called `name` (relu, sigmoid or tanh)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}"
        ) from None


class SeedCNN(nn.Module):
    """The seed's Net: conv (VALID, stride 1) -> act -> flatten -> fc1 -> act -> fc2.

    Flax infers fc1's input size from the conv output, so the seed's
    `Linear(32 * 224 * 224, 1000)` bug (a 5x5 VALID conv of 224 gives 220)
    cannot happen here. Layer names match the seed's (conv1, fc1, fc2).
    """

    num_classes: int
    features: int = 32
    kernel_size: int = 5
    hidden: int = 1000
    activation: str = "relu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        act = get_activation(self.activation)
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding="VALID",
            dtype=self.dtype,
            name="conv1",
        )(images)
        x = act(x)
        x = x.reshape((x.shape[0], -1))
        x = act(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)


class MLP(nn.Module):
    """The seed's "DNN": flatten -> (Dense -> act) per hidden width -> Dense."""

    num_classes: int
    hidden: Sequence[int] = (1000,)
    activation: str = "relu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        act = get_activation(self.activation)
        x = images.reshape((images.shape[0], -1))
        for i, width in enumerate(self.hidden):
            x = act(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x))
        return nn.Dense(
            self.num_classes, dtype=self.dtype, name=f"fc{len(self.hidden) + 1}"
        )(x)


MODELS = ("seed_cnn", "mlp")


def create_model(model_config, num_classes: int) -> nn.Module:
    """The module that `model_config.name` names, built from the config's `model` group."""
    if model_config.activation not in ACTIVATIONS:
        raise UserError(
            f"config.model.activation is {model_config.activation!r}; "
            f"use one of {', '.join(ACTIVATIONS)}"
        )
    if model_config.name == "seed_cnn":
        return SeedCNN(
            num_classes=num_classes,
            features=model_config.features,
            kernel_size=model_config.kernel_size,
            hidden=model_config.hidden,
            activation=model_config.activation,
        )
    if model_config.name == "mlp":
        return MLP(
            num_classes=num_classes,
            hidden=tuple(model_config.mlp_hidden),
            activation=model_config.activation,
        )
    raise UserError(f"config.model.name is {model_config.name!r}; use one of {', '.join(MODELS)}")
