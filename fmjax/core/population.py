"""A population: one model trained as several members at once, one per (seed, learning rate).

With data on the devices, member k of a population equals the ordinary run of its own seed and rate: the
same initial params, data order and augmentation (fmjax.run trains the members
with jax.vmap over a leading "member" axis of the train state). Rates differ
inside one compiled step, as a per-member value in the optimizer state.
"""

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a population: the ordinary run of `seed` and `learning_rate`."""

    seed: int
    learning_rate: float


def is_population(config: ml_collections.ConfigDict) -> bool:
    """Whether `config` asks for several members (config.num_seeds, config.sweep.learning_rates)."""
    return config.num_seeds > 1 or len(config.sweep.learning_rates) > 0


def population_members(config: ml_collections.ConfigDict) -> list[Member]:
    """The members, rate by rate and within a rate seed by seed: config.seed, config.seed + 1, ...

    Without a sweep the one rate is config.learning_rate.
    """
    rates = [float(rate) for rate in config.sweep.learning_rates] or [float(config.learning_rate)]
    return [Member(config.seed + i, rate) for rate in rates for i in range(config.num_seeds)]


def member_config(config: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
    """The config of the ordinary run that `member` equals."""
    config = config.copy_and_resolve_references()
    config.seed, config.learning_rate = member.seed, member.learning_rate
    config.num_seeds, config.sweep.learning_rates = 1, ()
    return config


def member_slice(tree: Any, index: int) -> Any:
    """Member `index`'s part of a population's tree (each leaf's row `index`)."""
    return jax.tree.map(lambda leaf: leaf[index], tree)


def with_learning_rates(opt_state: Any, rates: Sequence[float]) -> Any:
    """A population's optimizer state (optax.inject_hyperparams') with each member's learning rate set."""
    hyperparams = dict(opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(rates, hyperparams["learning_rate"].dtype)
    return opt_state._replace(hyperparams=hyperparams)
