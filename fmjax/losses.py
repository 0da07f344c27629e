"""Losses over a batch of logits and integer labels, averaged over unmasked examples.

`mask` marks the real examples of a padded batch (1) and the padding (0); a
batch whose mask is all zero has loss 0, not NaN.
"""

from typing import Optional

import jax.numpy as jnp
import optax


def masked_mean(values: jnp.ndarray, mask: Optional[jnp.ndarray]) -> jnp.ndarray:
    """Mean of per-example `values` [B] over the examples where `mask` [B] is 1."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(
    logits: jnp.ndarray, labels: jnp.ndarray, mask: Optional[jnp.ndarray] = None
) -> jnp.ndarray:
    """Softmax cross-entropy, as torch.nn.CrossEntropyLoss (the seed's criterion).

    Args:
      logits: float [B, num_classes].
      labels: int [B], class indices.
      mask: optional [B], 1 for real examples and 0 for padding.

    Returns:
      The scalar mean loss over the unmasked examples.
    """
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels
    )
    return masked_mean(per_example, mask)


def mse(
    logits: jnp.ndarray, labels: jnp.ndarray, mask: Optional[jnp.ndarray] = None
) -> jnp.ndarray:
    """Mean squared error between the logits and one-hot targets (the seed's MSE).

    Each example's error is the mean over classes, as torch.nn.MSELoss against
    one-hot targets; the result is the mean over the unmasked examples.
    """
    targets = jnp.eye(logits.shape[-1], dtype=jnp.float32)[labels]
    per_example = jnp.mean((logits.astype(jnp.float32) - targets) ** 2, axis=-1)
    return masked_mean(per_example, mask)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}


def get_loss(name: str):
    """The loss function called `name` (cross_entropy or mse)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}") from None
