"""Losses over a batch of logits and integer labels, averaged over unmasked examples.

`mask` marks the real examples of a padded batch (1) and the padding (0); a
batch whose mask is all zero has loss 0, not NaN.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from fmjax.errors import UserError


def masked_mean(values: jnp.ndarray, mask: Optional[jnp.ndarray]) -> jnp.ndarray:
    """Mean of per-example `values` [B] over the examples where `mask` [B] is 1."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _targets(labels: jnp.ndarray, num_classes: int, label_smoothing: float) -> jnp.ndarray:
    """One-hot targets, with `label_smoothing` of the weight spread evenly over all classes."""
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return optax.smooth_labels(one_hot, label_smoothing) if label_smoothing else one_hot


def cross_entropy(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    mask: Optional[jnp.ndarray] = None,
    label_smoothing: float = 0.0,
) -> jnp.ndarray:
    """Softmax cross-entropy, as torch.nn.CrossEntropyLoss (the seed's criterion).

    Args:
      logits: float [B, num_classes].
      labels: int [B], class indices.
      mask: optional [B], 1 for real examples and 0 for padding.
      label_smoothing: in [0, 1); 0 is the plain loss.

    Returns:
      The scalar mean loss over the unmasked examples.
    """
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        targets = _targets(labels, logits.shape[-1], label_smoothing)
        per_example = optax.softmax_cross_entropy(logits, targets)
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return masked_mean(per_example, mask)


def mse(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    mask: Optional[jnp.ndarray] = None,
    label_smoothing: float = 0.0,
) -> jnp.ndarray:
    """Mean squared error between the logits and one-hot targets (the seed's MSE).

    Each example's error is the mean over classes, as torch.nn.MSELoss against
    one-hot targets; the result is the mean over the unmasked examples.
    """
    targets = _targets(labels, logits.shape[-1], label_smoothing)
    per_example = jnp.mean((logits.astype(jnp.float32) - targets) ** 2, axis=-1)
    return masked_mean(per_example, mask)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}


def get_loss(name: str, label_smoothing: float = 0.0):
    """The loss called `name` (cross_entropy or mse) as (logits, labels, mask) -> loss."""
    if name not in LOSSES:
        raise UserError(f"config.loss is {name!r}; use one of {', '.join(LOSSES)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"config.label_smoothing is {label_smoothing}; use a value in [0, 1)")
    if not label_smoothing:
        return LOSSES[name]
    return functools.partial(LOSSES[name], label_smoothing=label_smoothing)
