"""fmjax: the seed's image classifier as pure JAX/Flax functions.

The pure core, for research code: the models (fmjax.core.models), the losses
(fmjax.core.losses), the optimizer from a config (fmjax.create_optimizer), the
train state (fmjax.create_train_state), the steps (fmjax.train_step,
fmjax.eval_step) and the trained params of a run (fmjax.restore_params).
"""

from fmjax.core import losses, models
from fmjax.core.optim import create_optimizer
from fmjax.core.state import TrainState, create_train_state
from fmjax.core.steps import eval_step, train_step
from fmjax.run.checkpoint_reads import restore_params

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
