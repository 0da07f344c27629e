"""The train state: a pytree of arrays with the model and optimizer as static fields."""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes.

    Attributes:
      step: int32 scalar, the number of updates applied so far.
      params: the model's parameters.
      opt_state: the optax state of `tx`.
      rng: a PRNG key for a model's own randomness (dropout, say), to be
        drawn as `jax.random.fold_in(rng, step)` so a resumed run draws the
        same numbers. No shipped model and no step reads it: augmentation is
        drawn from (config.seed, epoch, example index) in fmjax.data.preprocess,
        so a batch's augmentation does not depend on how batches are split.
      batch_stats: the model's running statistics (BatchNorm), {} if none.
      apply_fn: the model's `apply` (static: not a pytree leaf).
      tx: the optax transformation (static).
    """

    step: jnp.ndarray
    params: Any
    opt_state: optax.OptState
    rng: jax.Array
    batch_stats: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    def variables(self, params: Any = None) -> dict:
        """The `variables` dict that `apply_fn` takes, with `params` if given."""
        variables = {"params": self.params if params is None else params}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables


@flax.struct.dataclass
class ModelState:
    """What a forward pass reads, without an optimizer: for evaluating or serving trained params.

    `fmjax.eval_step` takes it as it takes a TrainState.

    Attributes:
      params: the model's parameters.
      batch_stats: the model's running statistics (BatchNorm), {} if none.
      apply_fn: the model's `apply` (static: not a pytree leaf).
    """

    params: Any
    batch_stats: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False)

    def variables(self, params: Any = None) -> dict:
        """The `variables` dict that `apply_fn` takes, with `params` if given."""
        variables = {"params": self.params if params is None else params}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables


def step_number(state: Any) -> int:
    """The updates applied to `state` (a TrainState, or a population's, whose members all share it), on the host."""
    return int(np.ravel(jax.device_get(state.step))[0])


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    sample_input: jnp.ndarray,
) -> TrainState:
    """Initialises the model and optimizer.

    Args:
      rng: a PRNG key; it seeds the parameters and becomes the state's rng.
      model: a Flax Linen module mapping images [B, H, W, C] to logits.
      optimizer: the optax transformation that updates the params.
      sample_input: an array (or jax.ShapeDtypeStruct) with the input's shape
        and dtype; only its shape matters.

    Returns:
      The TrainState at step 0. Pure, so `jax.eval_shape` of it gives the
      state's shapes without allocating them.
    """
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros(sample_input.shape, sample_input.dtype))
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=state_rng,
        batch_stats=variables.get("batch_stats", {}),
        apply_fn=model.apply,
        tx=optimizer,
    )
