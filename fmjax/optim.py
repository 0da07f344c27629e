"""The optax transformation a config asks for."""

import ml_collections
import optax

from fmjax.errors import UserError

OPTIMIZERS = ("adam", "sgd")


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Builds the optimizer named by `config.optimizer.name`.

    Args:
      config: reads `learning_rate` and the `optimizer` group: `name` ("adam",
        the seed's, or "sgd", the seed's gradient descent), `momentum` (sgd; 0
        is plain gradient descent), `nesterov` (sgd), `b1`, `b2`, `eps` (adam,
        eps outside the square root as in Kingma and Ba and torch.optim.Adam)
        and `weight_decay` (an L2 term added to the gradient before the update,
        as torch's `weight_decay` does for both optimizers; 0 turns it off).

    Returns:
      The optax transformation.
    """
    opt = config.optimizer
    if opt.name == "adam":
        update = optax.adam(config.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "sgd":
        update = optax.sgd(
            config.learning_rate, momentum=opt.momentum or None, nesterov=opt.nesterov
        )
    else:
        raise UserError(
            f"config.optimizer.name is {opt.name!r}; use one of {', '.join(OPTIMIZERS)}"
        )
    if opt.weight_decay:
        return optax.chain(optax.add_decayed_weights(opt.weight_decay), update)
    return update
