"""A SeedCNN small enough for 8 fake CPU devices, and seeded random batches for it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fmjax
from fmjax.core.models import SeedCNN

GLOBAL_BATCH = 16
STEPS = 4


def tiny_state():
    """A fresh TrainState of a 4-class SeedCNN on 8x8 images, with Adam; the same on every call."""
    model = SeedCNN(num_classes=4, features=4, hidden=16)
    return fmjax.create_train_state(jax.random.key(0), model, optax.adam(1e-2), jnp.zeros((1, 8, 8, 3)))


def global_batches():
    """STEPS global batches of GLOBAL_BATCH random 8x8 images and labels, the same on every call."""
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.random((GLOBAL_BATCH, 8, 8, 3), dtype=np.float32),
            "label": rng.integers(0, 4, GLOBAL_BATCH).astype(np.int32),
        }
        for _ in range(STEPS)
    ]
