"""The pure train and eval steps.

Both are plain functions of (state, batch): jit, vmap, grad, scan and pmap
compose with them. A batch is a dict with "image" float [B, H, W, C], "label"
int32 [B] and, optionally, "mask" [B] (1 for real examples, 0 for padding).
"""

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

from fmjax.core.losses import cross_entropy
from fmjax.core.state import ModelState, TrainState
from fmjax.errors import UserError

Batch = dict[str, jnp.ndarray]
LossFn = Callable[[jnp.ndarray, jnp.ndarray, Optional[jnp.ndarray]], jnp.ndarray]
# config.optimizer.update_placement: where the optimizer's update is computed (see train_step).
UPDATE_PLACEMENTS = ("auto", "conditional", "inline")


def _logits(state: TrainState, params: Any, images: jnp.ndarray, train: bool):
    """The model's logits and, for models with batch statistics in training, their update."""
    if not state.batch_stats:
        return state.apply_fn(state.variables(params), images), state.batch_stats
    if train:
        logits, updates = state.apply_fn(
            state.variables(params), images, train=True, mutable=["batch_stats"]
        )
        return logits, updates["batch_stats"]
    return state.apply_fn(state.variables(params), images, train=False), state.batch_stats


def _correct(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    loss_fn: LossFn = cross_entropy,
    axis_name: Optional[str] = None,
    check_finite: bool = True,
    grad_accum_steps: int = 1,
    update_in_conditional: Optional[bool] = None,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One forward and backward pass and one optimizer update.

    Args:
      state: the current TrainState.
      batch: {"image", "label"} and an optional "mask".
      loss_fn: (logits, labels, mask) -> scalar mean loss.
      axis_name: when the step runs under pmap (or shard_map), the mapped
        axis; gradients, batch statistics and metrics are averaged over it,
        so every device applies the same update.
      check_finite: whether to add the "finite" flag (see `update_is_finite`);
        it costs one more read of the gradients.
      grad_accum_steps: the batch's gradient is computed as the average over
        this many equal micro-batches in one compiled loop, so only one
        micro-batch's activations are alive at a time; the update is the
        one a single pass over the batch gives (to float rounding), except
        that BatchNorm sees each micro-batch's statistics. The batch size
        must divide by it.
      update_in_conditional: compute the optimizer update inside a
        `lax.cond` whose predicate XLA cannot fold (the step counter is not
        negative), so it runs after every gradient and apart from them. The
        update is the same to float rounding (XLA may sum a bias gradient in
        another order), and the same bit for bit under jit and pmap. XLA's
        CPU backend then updates the params and moments in place. Without
        it, XLA copies fc1's kernel at every step; under pmap, whose reshapes
        keep its fusions from writing in place, it also copies the params
        and both moments (the seed's model at 224x224: 43.4 GB against 25.9
        GB). On TPU the conditional costs memory instead (the same model on a
        v4 chip: 46.7 GB of temporaries against 6.2 GB). Under jax.vmap the
        conditional becomes a select of both branches, which costs memory:
        pass False there. None, the default, turns it on on CPU only.

    Returns:
      The new state and {"loss", "accuracy"}, means over the (unmasked) batch,
      and, with check_finite, "finite": whether the loss, the gradients and
      the new batch statistics are free of NaN and Inf.
    """
    if grad_accum_steps == 1:
        grads, batch_stats, metrics = _gradients(state, state.batch_stats, batch, loss_fn)
    else:
        grads, batch_stats, metrics = _accumulated_gradients(state, batch, loss_fn, grad_accum_steps)
    # A mean over one device is the identity; XLA would still give it a second gradient buffer.
    if axis_name is not None and jax.lax.axis_size(axis_name) > 1:
        grads, batch_stats, metrics = jax.lax.pmean(
            (grads, batch_stats, metrics), axis_name
        )
    if update_in_conditional is None:
        update_in_conditional = jax.default_backend() == "cpu"
    params, opt_state = _updated(state, grads, update_in_conditional)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats
    )
    if check_finite:
        # One flag per step lets the loop find the first non-finite step
        # without a host sync at every step.
        metrics["finite"] = update_is_finite(metrics["loss"], grads, batch_stats)
    return new_state, metrics


def _updated(state: TrainState, grads: Any, in_conditional: bool) -> tuple[Any, Any]:
    """The params and optimizer state after applying `grads` (see train_step's update_in_conditional)."""

    def apply(params, opt_state):
        updates, opt_state = state.tx.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state

    if not in_conditional:
        return apply(state.params, state.opt_state)
    unchanged = lambda params, opt_state: (params, opt_state)  # noqa: E731
    return jax.lax.cond(state.step >= 0, apply, unchanged, state.params, state.opt_state)


def update_in_conditional(placement: str) -> Optional[bool]:
    """train_step's update_in_conditional for config.optimizer.update_placement ("auto" is None: by the backend)."""
    if placement not in UPDATE_PLACEMENTS:
        raise UserError(f"config.optimizer.update_placement is {placement!r}; use one of {', '.join(UPDATE_PLACEMENTS)}")
    return {"auto": None, "conditional": True, "inline": False}[placement]


def _gradients(state: TrainState, batch_stats: Any, batch: Batch, loss_fn: LossFn):
    """(grads, new batch_stats, {"loss", "accuracy"}) of one pass over `batch`."""
    mask = batch.get("mask")
    state = state.replace(batch_stats=batch_stats)

    def loss_and_aux(params):
        logits, new_batch_stats = _logits(state, params, batch["image"], train=True)
        return loss_fn(logits, batch["label"], mask), (logits, new_batch_stats)

    (loss, (logits, new_batch_stats)), grads = jax.value_and_grad(
        loss_and_aux, has_aux=True
    )(state.params)
    correct = _correct(logits, batch["label"])
    accuracy = jnp.mean(correct) if mask is None else jnp.sum(correct * mask) / jnp.maximum(
        jnp.sum(mask), 1.0
    )
    return grads, new_batch_stats, {"loss": loss, "accuracy": accuracy}


def _accumulated_gradients(state: TrainState, batch: Batch, loss_fn: LossFn, num_micro: int):
    """_gradients over `batch` as the count-weighted average over `num_micro` micro-batches."""
    size = batch["label"].shape[0]
    if size % num_micro:
        raise ValueError(f"batch of {size} does not split into {num_micro} equal micro-batches")
    micro = jax.tree.map(lambda x: x.reshape(num_micro, size // num_micro, *x.shape[1:]), batch)
    mask = micro.get("mask")
    counts = (
        jnp.sum(mask, axis=1).astype(jnp.float32)
        if mask is not None
        else jnp.full((num_micro,), size // num_micro, jnp.float32)
    )
    weights = counts / jnp.maximum(jnp.sum(counts), 1.0)

    def add(carry, inputs):
        grads_sum, batch_stats, metrics_sum = carry
        micro_batch, weight = inputs
        grads, batch_stats, metrics = _gradients(state, batch_stats, micro_batch, loss_fn)
        scale = lambda total, x: total + weight * x  # noqa: E731
        return (
            jax.tree.map(scale, grads_sum, grads),
            batch_stats,
            jax.tree.map(scale, metrics_sum, metrics),
        ), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    metric_zeros = {"loss": jnp.zeros((), jnp.float32), "accuracy": jnp.zeros((), jnp.float32)}
    (grads, batch_stats, metrics), _ = jax.lax.scan(
        add, (zeros, state.batch_stats, metric_zeros), (micro, weights)
    )
    return grads, batch_stats, metrics


def update_is_finite(loss: jnp.ndarray, grads: Any, batch_stats: Any) -> jnp.ndarray:
    """A bool scalar: the loss, the gradients and the batch statistics are free of NaN and Inf.

    An update from finite gradients leaves finite params and optimizer state
    finite (short of a float32 overflow of the params themselves), so this
    reads the gradients once more instead of the whole new state. The
    gradients' sum is finite exactly when they are (or when it overflows
    float32, itself a sign of divergence), and computing it stores nothing
    per element: a squared norm would share its squares with Adam's and keep
    them, a per-element isfinite would keep a mask.
    """
    grad_sum = sum(_leaf_sum(g.astype(jnp.float32)) for g in jax.tree.leaves(grads))
    return jnp.isfinite(loss) & jnp.isfinite(grad_sum) & all_finite(batch_stats)


def _leaf_sum(leaf: jnp.ndarray) -> jnp.ndarray:
    """The sum of `leaf`'s elements; a NaN or an Inf anywhere makes it NaN or Inf."""
    if leaf.ndim < 2 or leaf.size == 0:
        return jnp.sum(leaf)
    # As a product with a vector of ones: on CPU, XLA's reduction of a large
    # array is slower than its matrix-vector product (the seed's fc1 gradient
    # at 16x16: 1.0 ms against 0.4 ms, of a 13 ms step).
    rows = leaf.reshape(-1, leaf.shape[-1])
    return jnp.sum(rows @ jnp.ones(rows.shape[-1], rows.dtype))


def all_finite(tree: Any) -> jnp.ndarray:
    """A bool scalar: True when no floating-point leaf of `tree` holds a NaN or an Inf."""
    flags = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def eval_step(
    state: Union[TrainState, ModelState], batch: Batch, *, loss_fn: LossFn = cross_entropy
) -> dict[str, jnp.ndarray]:
    """Sums over one batch, so that adding them up over batches is exact.

    Args:
      state: the TrainState, or the ModelState of trained params, to evaluate.
      batch: {"image", "label"} and an optional "mask"; masked examples
        (padding of the last batch) count nowhere.
      loss_fn: (logits, labels, mask) -> scalar mean loss.

    Returns:
      {"loss_sum", "correct", "count"} as float32 scalars and "confusion", a
      float32 [num_classes, num_classes] count of (true label, prediction).
    """
    logits, _ = _logits(state, state.params, batch["image"], train=False)
    labels = batch["label"]
    mask = batch.get("mask")
    if mask is None:
        mask = jnp.ones(labels.shape, jnp.float32)
    mask = mask.astype(jnp.float32)
    count = jnp.sum(mask)
    num_classes = logits.shape[-1]
    predictions = jnp.argmax(logits, axis=-1)
    confusion = jnp.zeros((num_classes, num_classes), jnp.float32).at[
        labels, predictions
    ].add(mask)
    return {
        "loss_sum": loss_fn(logits, labels, mask) * count,
        "correct": jnp.sum(_correct(logits, labels) * mask),
        "count": count,
        "confusion": confusion,
    }
