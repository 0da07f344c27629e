"""fmjax: the seed's image classifier as pure JAX/Flax functions.

The pure core, for research code: the models (fmjax.models), the losses
(fmjax.losses), the optimizer from a config (fmjax.create_optimizer), the
train state (fmjax.create_train_state), the steps (fmjax.train_step,
fmjax.eval_step) and the trained params of a run (fmjax.restore_params).
"""

from fmjax import losses, models
from fmjax.checkpoint import restore_params
from fmjax.optim import create_optimizer
from fmjax.state import TrainState, create_train_state
from fmjax.steps import eval_step, train_step

__all__ = [
    "TrainState",
    "create_optimizer",
    "create_train_state",
    "eval_step",
    "losses",
    "models",
    "restore_params",
    "train_step",
]
