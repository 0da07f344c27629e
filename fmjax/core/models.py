"""Flax Linen models: the seed's CNN, its fully connected "DNN", and a ResNet baseline.

Each takes NHWC float images and returns unnormalised logits. `dtype` is the
dtype of the activations and matmuls; parameters stay float32. `init` and
`apply` are the pure functions research code composes with jit, vmap and grad.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

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


CONV_IMPLEMENTATIONS = ("auto", "native", "slices")
DENSE_IMPLEMENTATIONS = ("auto", "plain", "kernel_in_front")


class ValidConv(nn.Module):
    """A stride-1 VALID convolution with nn.Conv's parameters ("kernel" [k, k, C, F], "bias" [F]).

    `implementation` "native" is lax.conv; "slices" stacks the k*k shifted
    windows of the input along the channels and does one matmul. Both are the
    same function of the same parameters (tests compare them). XLA's CPU
    convolution runs a kernel this small (3 input channels) at a few GFLOP/s
    and its kernel gradient slower still, while the matmul runs at the CPU's
    matmul speed: the seed's step at 16x16 takes about half the time. "auto"
    picks "slices" on CPU and "native" on GPU and TPU, whose convolutions are
    fast.
    """

    features: int
    kernel_size: int
    implementation: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        k, channels = self.kernel_size, images.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, channels, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        images, kernel, bias = nn.dtypes.promote_dtype(images, kernel, bias, dtype=self.dtype)
        implementation = self.implementation
        if implementation == "auto":
            implementation = "slices" if jax.default_backend() == "cpu" else "native"
        if implementation == "native":
            out = jax.lax.conv_general_dilated(
                images, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            height, width = images.shape[-3] - k + 1, images.shape[-2] - k + 1
            # Window (i, j) of channel c lands at i * k * C + j * C + c, the
            # order of the HWIO kernel's first three axes flattened.
            windows = jnp.concatenate(
                [images[..., i : i + height, j : j + width, :] for i in range(k) for j in range(k)],
                axis=-1,
            )
            out = windows @ kernel.reshape(k * k * channels, self.features)
        return out + bias


@jax.custom_jvp
def matmul_kernel_in_front(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """x @ kernel for x [B, K] and kernel [K, N], the gradient in x computed as kernel @ dy.T.

    The same function and forward pass as `x @ kernel`. Written plainly, XLA's
    CPU backend computes the gradient in x as dy @ kernel.T, which ran at half
    the forward product's speed for the seed's fc1 (4608 x 1000). The tangent
    below keeps the kernel in front, so its transpose is kernel @ dy.T, and an
    optimization barrier keeps XLA from folding it back: the seed's step took
    12.4 ms against 13.1 ms at 16x16, 72.7 ms against 78.1 ms at 32x32. A
    custom_jvp, not a custom_vjp, so forward-mode derivatives still work.
    """
    return x @ kernel


def _matmul_kernel_in_front_jvp(primals, tangents):
    (x, kernel), (x_dot, kernel_dot) = primals, tangents
    # Symbolic zeros (a first layer's input, which nothing differentiates) cost nothing.
    parts = [] if isinstance(x_dot, SymbolicZero) else [(kernel.T @ jax.lax.optimization_barrier(x_dot.T)).T]
    parts += [] if isinstance(kernel_dot, SymbolicZero) else [x @ kernel_dot]
    y = x @ kernel
    return y, functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(y)


matmul_kernel_in_front.defjvp(_matmul_kernel_in_front_jvp, symbolic_zeros=True)


def kernel_in_front_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's product (lax.dot_general's signature) through matmul_kernel_in_front.

    Any product but a plain [B, K] x [K, N] at the default precision goes to
    lax.dot_general unchanged.
    """
    (contracting, batch) = dimension_numbers
    matrix_product = (lhs.ndim, rhs.ndim) == (2, 2) and tuple(map(tuple, contracting)) == ((1,), (0,)) and not any(batch)
    if not matrix_product or precision is not None or preferred_element_type is not None:
        return jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type
        )
    return matmul_kernel_in_front(lhs, rhs)


def seed_dense(implementation: str, dtype: jnp.dtype) -> Callable[..., nn.Module]:
    """nn.Dense for the seed's models, its product as `implementation` says.

    "plain" is Flax's own; "kernel_in_front" is matmul_kernel_in_front (the
    same function; its input gradient runs faster on CPU); "auto" picks
    "kernel_in_front" on CPU and "plain" on GPU and TPU, whose compilers
    choose their own layouts for the transposed product.
    """
    if implementation == "auto":
        implementation = "kernel_in_front" if jax.default_backend() == "cpu" else "plain"
    if implementation == "plain":
        return functools.partial(nn.Dense, dtype=dtype)
    return functools.partial(nn.Dense, dtype=dtype, dot_general=kernel_in_front_dot_general)


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
    conv_implementation: str = "auto"  # see ValidConv
    dense_implementation: str = "auto"  # see seed_dense

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        act = get_activation(self.activation)
        x = ValidConv(
            self.features,
            self.kernel_size,
            implementation=self.conv_implementation,
            dtype=self.dtype,
            name="conv1",
        )(images)
        x = act(x)
        x = x.reshape((x.shape[0], -1))
        dense = seed_dense(self.dense_implementation, self.dtype)
        x = act(dense(self.hidden, name="fc1")(x))
        return dense(self.num_classes, name="fc2")(x)


class MLP(nn.Module):
    """The seed's "DNN": flatten -> (Dense -> act) per hidden width -> Dense."""

    num_classes: int
    hidden: Sequence[int] = (1000,)
    activation: str = "relu"
    dtype: jnp.dtype = jnp.float32
    dense_implementation: str = "auto"  # see seed_dense

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        act = get_activation(self.activation)
        dense = seed_dense(self.dense_implementation, self.dtype)
        x = images.reshape((images.shape[0], -1))
        for i, width in enumerate(self.hidden):
            x = act(dense(width, name=f"fc{i + 1}")(x))
        return dense(self.num_classes, name=f"fc{len(self.hidden) + 1}")(x)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut (ResNet's basic block)."""

    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
        )
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        y = conv(self.features, (3, 3), strides=self.strides, padding=1)(x)
        y = nn.relu(norm()(y))
        y = conv(self.features, (3, 3), padding=1)(y)
        # Zero-initialised last scale: each block starts as the identity.
        y = norm(scale_init=nn.initializers.zeros)(y)
        if x.shape[-1] != self.features or self.strides != 1:
            x = conv(self.features, (1, 1), strides=self.strides)(x)
            x = norm()(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet-18 style with the CIFAR stem (a 3x3 conv, no max-pool).

    Its BatchNorm statistics live in the TrainState's `batch_stats`; call it
    with `train=True` (and `mutable=["batch_stats"]`) to train.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(images)
        x = nn.relu(
            nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
        )
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = ResidualBlock(self.width * 2**stage, strides, dtype=self.dtype)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


MODELS = ("seed_cnn", "mlp", "resnet")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(model_config, num_classes: int) -> nn.Module:
    """The module that `model_config.name` names, built from the config's `model` group."""
    if model_config.activation not in ACTIVATIONS:
        raise UserError(
            f"config.model.activation is {model_config.activation!r}; "
            f"use one of {', '.join(ACTIVATIONS)}"
        )
    if model_config.dtype not in DTYPES:
        raise UserError(
            f"config.model.dtype is {model_config.dtype!r}; use one of {', '.join(DTYPES)}"
        )
    dtype = DTYPES[model_config.dtype]
    dense = model_config.get("dense", "auto")  # absent from the config.json of older runs
    if dense not in DENSE_IMPLEMENTATIONS:
        raise UserError(f"config.model.dense is {dense!r}; use one of {', '.join(DENSE_IMPLEMENTATIONS)}")
    if model_config.name == "seed_cnn":
        if model_config.conv not in CONV_IMPLEMENTATIONS:
            raise UserError(
                f"config.model.conv is {model_config.conv!r}; use one of "
                f"{', '.join(CONV_IMPLEMENTATIONS)}"
            )
        return SeedCNN(
            num_classes=num_classes,
            features=model_config.features,
            kernel_size=model_config.kernel_size,
            hidden=model_config.hidden,
            activation=model_config.activation,
            dtype=dtype,
            conv_implementation=model_config.conv,
            dense_implementation=dense,
        )
    if model_config.name == "mlp":
        return MLP(
            num_classes=num_classes,
            hidden=tuple(model_config.mlp_hidden),
            activation=model_config.activation,
            dtype=dtype,
            dense_implementation=dense,
        )
    if model_config.name == "resnet":
        return ResNet(
            num_classes=num_classes,
            stage_sizes=tuple(model_config.resnet_stage_sizes),
            width=model_config.resnet_width,
            dtype=dtype,
        )
    raise UserError(f"config.model.name is {model_config.name!r}; use one of {', '.join(MODELS)}")
