"""The optax transformation a config asks for: learning-rate schedule, clipping, optimizer."""

from typing import Any, Optional

import ml_collections
import optax

from fmjax.errors import UserError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "step")


def create_learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: Optional[int] = None, peak: Any = None
) -> optax.Schedule:
    """The learning rate as a function of the step.

    Args:
      config: reads `learning_rate`, `num_epochs` and the `schedule` group:
        `name` ("constant", the seed's; "warmup_cosine": linear warm-up over
        `warmup_epochs` then cosine decay to `end_learning_rate` at the last
        step; "step": multiplied by `decay_factor` at each epoch in
        `decay_epochs`).
      steps_per_epoch: converts epochs to steps; needed by every schedule but
        "constant".
      peak: the rate in place of config.learning_rate (a population member's,
        possibly a traced array).

    Returns:
      An optax schedule, step -> learning rate.
    """
    schedule = config.schedule
    peak = config.learning_rate if peak is None else peak
    if schedule.name == "constant":
        return optax.constant_schedule(peak)
    if schedule.name not in SCHEDULES:
        raise UserError(
            f"config.schedule.name is {schedule.name!r}; use one of {', '.join(SCHEDULES)}"
        )
    if not steps_per_epoch:
        raise ValueError(f"the {schedule.name!r} schedule needs steps_per_epoch")
    if schedule.name == "warmup_cosine":
        total_steps = config.num_epochs * steps_per_epoch
        warmup_steps = int(round(schedule.warmup_epochs * steps_per_epoch))
        if warmup_steps >= total_steps:
            raise UserError(
                f"config.schedule.warmup_epochs={schedule.warmup_epochs} leaves no step to "
                f"decay in {config.num_epochs} epochs; make it smaller than num_epochs"
            )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup_steps,
            decay_steps=total_steps,
            end_value=schedule.end_learning_rate,
        )
    boundaries = {
        int(epoch * steps_per_epoch): schedule.decay_factor for epoch in schedule.decay_epochs
    }
    return optax.piecewise_constant_schedule(peak, boundaries)


def create_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: Optional[int] = None, rate_in_state: bool = False
) -> optax.GradientTransformation:
    """Builds the optimizer that the config names, with its schedule and clipping.

    Args:
      config: reads `learning_rate`, the `schedule` group (see
        create_learning_rate_schedule), `grad_clip_norm` (clip the gradients'
        global norm to this; 0 turns it off) and the `optimizer` group: `name`
        ("adam", the seed's, or "sgd", the seed's gradient descent), `momentum`
        (sgd; 0 is plain gradient descent), `nesterov` (sgd), `b1`, `b2`, `eps`
        (adam, eps outside the square root as in Kingma and Ba and
        torch.optim.Adam) and `weight_decay` (an L2 term added to the gradient
        before the update, as torch's `weight_decay` does for both optimizers;
        0 turns it off).
      steps_per_epoch: for schedules given in epochs.
      rate_in_state: keep the peak learning rate in the optimizer state
        (optax.inject_hyperparams), where each member of a population sets
        its own (fmjax.core.population.with_learning_rates).

    Returns:
      The optax transformation.
    """
    if rate_in_state:
        return optax.inject_hyperparams(
            lambda learning_rate: _optimizer(config, create_learning_rate_schedule(config, steps_per_epoch, learning_rate))
        )(learning_rate=config.learning_rate)
    return _optimizer(config, create_learning_rate_schedule(config, steps_per_epoch))


def _optimizer(config: ml_collections.ConfigDict, learning_rate: optax.Schedule) -> optax.GradientTransformation:
    opt = config.optimizer
    if opt.name == "adam":
        update = optax.adam(learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "sgd":
        update = optax.sgd(learning_rate, momentum=opt.momentum or None, nesterov=opt.nesterov)
    else:
        raise UserError(
            f"config.optimizer.name is {opt.name!r}; use one of {', '.join(OPTIMIZERS)}"
        )
    transforms = []
    if config.grad_clip_norm > 0:
        transforms.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if opt.weight_decay:
        transforms.append(optax.add_decayed_weights(opt.weight_decay))
    return optax.chain(*transforms, update) if transforms else update
