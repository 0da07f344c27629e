"""fmjax: the seed's image classifier as pure JAX/Flax functions.

The pure core, for research code: the models (fmjax.models), the losses
(fmjax.losses), the optimizer from a config (fmjax.create_optimizer), the
train state (fmjax.create_train_state; fmjax.ModelState without an optimizer),
model, optimizer and initial state from a config in one call (fmjax.build),
the steps (fmjax.train_step, fmjax.eval_step) and the trained params of a run
(fmjax.restore_params, which reads the checkpoint with Orbax).
"""

from fmjax.core import losses, models
from fmjax.core.build import RunParts, build
from fmjax.core.optim import create_optimizer
from fmjax.core.state import ModelState, TrainState, create_train_state
from fmjax.core.steps import eval_step, train_step

__all__ = [
    "ModelState",
    "RunParts",
    "TrainState",
    "build",
    "create_optimizer",
    "create_train_state",
    "eval_step",
    "losses",
    "models",
    "restore_params",
    "train_step",
]


def __getattr__(name: str):
    # Reading a checkpoint needs Orbax; importing fmjax (the pure core) does not.
    if name == "restore_params":
        from fmjax.run.checkpoint_reads import restore_params

        return restore_params
    raise AttributeError(f"module 'fmjax' has no attribute {name!r}")
