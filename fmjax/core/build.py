"""From a config to the parts of a run: the model, the optimizer and the initial train state."""

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fmjax.core.models import create_model
from fmjax.core.optim import create_learning_rate_schedule, create_optimizer
from fmjax.core.population import (
    Member,
    is_population,
    population_members,
    with_learning_rates,
)
from fmjax.core.state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class RunParts:
    """What `build` makes of a config.

    Attributes:
      model: the Flax module, images [B, H, W, C] -> logits.
      optimizer: the optax transformation of config.optimizer and config.schedule.
      init_state: a pure function of no arguments returning the TrainState at
        step 0, seeded by config.seed; `jax.eval_shape(init_state)` gives the
        state's shapes without allocating them.
      image_shape: (height, width, channels) of one input image.
      members: a population's members (fmjax.core.population), in the order of
        the state's leading axis; [] for an ordinary run, whose state has none.
      learning_rate: the schedule, step -> rate (for logs); for a population, step ->
        each member's rate.
    """

    model: nn.Module
    optimizer: optax.GradientTransformation
    init_state: Callable[[], TrainState]
    image_shape: tuple[int, ...]
    members: list[Member]
    learning_rate: optax.Schedule

    def input_spec(self, batch_size: int = 1) -> jax.ShapeDtypeStruct:
        """The shape and dtype of a batch of `batch_size` images, as the model takes it."""
        return jax.ShapeDtypeStruct((batch_size, *self.image_shape), np.float32)

    def abstract_variables(self) -> Any:
        """The shapes of one model's variables ({"params", ...}), allocating nothing."""
        return jax.eval_shape(self.model.init, jax.random.key(0), self.input_spec())


def build(
    config: ml_collections.ConfigDict,
    num_classes: int,
    image_shape: Sequence[int],
    steps_per_epoch: int = 1,
) -> RunParts:
    """The model, optimizer and initial-state function that `config` describes.

    Args:
      config: a config (see fmjax.config.base_config).
      num_classes: the model's outputs.
      image_shape: (height, width, channels) of one image.
      steps_per_epoch: turns the schedule's epochs into steps; evaluation and
        prediction, which never take a step, may leave it at 1.
    """
    model = create_model(config.model, num_classes)
    members = population_members(config) if is_population(config) else []
    optimizer = create_optimizer(config, steps_per_epoch, rate_in_state=bool(members))
    image_shape = tuple(int(side) for side in image_shape)
    sample = jax.ShapeDtypeStruct((1, *image_shape), np.float32)
    seed = config.seed

    def init_state() -> TrainState:
        if not members:
            return create_train_state(jax.random.key(seed), model, optimizer, sample)
        seeds = jnp.asarray([member.seed for member in members], jnp.int32)
        states = jax.vmap(lambda s: create_train_state(jax.random.key(s), model, optimizer, sample))(seeds)
        rates = [member.learning_rate for member in members]
        return states.replace(opt_state=with_learning_rates(states.opt_state, rates))

    schedule = create_learning_rate_schedule(config, steps_per_epoch)
    if members:
        schedules = [create_learning_rate_schedule(config, steps_per_epoch, m.learning_rate) for m in members]
        schedule = lambda step: np.asarray([float(each(step)) for each in schedules])  # noqa: E731
    return RunParts(model, optimizer, init_state, image_shape, members, schedule)
