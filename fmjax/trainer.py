"""train_and_evaluate(config, workdir): the training loop, read top to bottom.

config -> data -> model and optimizer -> state (fresh or resumed) -> parallel
steps -> epochs of train steps with checkpoints -> evaluation -> logs.
"""

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from fmjax import checkpoint as ckpt
from fmjax.data import Dataset, load_dataset
from fmjax.evaluation import evaluate
from fmjax.losses import get_loss
from fmjax.models import create_model
from fmjax.optim import create_optimizer
from fmjax.parallel import abstract_state, check_batch_size, make_data_parallel
from fmjax.state import create_train_state

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


def is_logging_process() -> bool:
    """Only process 0 prints and writes logs; every process joins checkpoints."""
    return jax.process_index() == 0


def log(message: str) -> None:
    """Prints one line from process 0, without breaking a progress bar."""
    if is_logging_process():
        tqdm.tqdm.write(message)


def initial_state_fn(config: ml_collections.ConfigDict, dataset: Dataset):
    """A function of no arguments returning the fresh TrainState that `config` describes.

    It is pure, so `jax.eval_shape` of it gives the state's shapes for free.
    """
    model = create_model(config.model, dataset.num_classes)
    optimizer = create_optimizer(config)
    sample = jax.ShapeDtypeStruct((1, *dataset.image_shape), np.float32)
    return lambda: create_train_state(jax.random.key(config.seed), model, optimizer, sample)


def checkpoint_meta(dataset: Dataset, config, epoch: int, next_batch: int) -> dict:
    """What a checkpoint records besides the arrays: the data position and class names."""
    return {
        "epoch": epoch,
        "next_batch": next_batch,
        "class_names": list(dataset.class_names),
        "image_size": config.image_size,
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
    """Trains the model that `config` describes, resuming from `workdir` if it holds a checkpoint.

    Args:
      config: a config from configs/ (see fmjax.config.base_config for every key).
      workdir: where checkpoints, config.json and metrics.jsonl go.

    Returns:
      The last epoch's metrics (the keys of metrics.jsonl).
    """
    # ---- Data and devices.
    dataset = load_dataset(config)
    parallel = make_data_parallel(config.parallel, get_loss(config.loss))
    check_batch_size(config.batch_size, parallel.num_devices)
    steps_per_epoch = dataset.steps_per_epoch(config.batch_size)

    # ---- State: fresh, or the latest checkpoint in workdir.
    state_fn = initial_state_fn(config, dataset)
    manager = ckpt.checkpoint_manager(workdir, max_to_keep=config.keep_checkpoints)
    start_epoch, start_batch = 0, 0
    latest = manager.latest_step()
    if latest is None:
        state = jax.jit(state_fn, out_shardings=parallel.state_sharding)()
    else:
        target = abstract_state(state_fn, parallel.state_sharding)
        state, meta = ckpt.restore_checkpoint(manager, latest, target)
        start_epoch, start_batch = meta["epoch"], meta["next_batch"]
        log(f"resumed from step {latest} in {ckpt.checkpoint_dir(workdir)} (epoch {start_epoch + 1}, batch {start_batch})")
    device_state = parallel.put_state(state)
    del state

    if is_logging_process():
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    def save(epoch: int, next_batch: int) -> None:
        state = parallel.get_state(device_state)
        ckpt.save_checkpoint(manager, state, checkpoint_meta(dataset, config, epoch, next_batch))

    # ---- The loop.
    record: dict[str, Any] = {}
    for epoch in range(start_epoch, config.num_epochs):
        first_batch = start_batch if epoch == start_epoch else 0
        batches = dataset.train_batches(
            epoch,
            config.batch_size,
            start_batch=first_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        progress = tqdm.tqdm(
            batches,
            total=steps_per_epoch - first_batch,
            desc=f"epoch {epoch + 1}/{config.num_epochs}",
            disable=not is_logging_process(),
            leave=False,
        )
        step_metrics = []
        timed_start, timed_steps = None, 0
        for batch_index, batch in enumerate(progress, start=first_batch):
            device_state, metrics = parallel.train_step(device_state, parallel.put_batch(batch))
            step_metrics.append(metrics)
            if timed_start is None:  # the first step compiles; time the rest
                jax.block_until_ready(metrics)
                timed_start = time.perf_counter()
            else:
                timed_steps += 1
            step = epoch * steps_per_epoch + batch_index + 1
            if config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0:
                if batch_index + 1 < steps_per_epoch:  # the epoch's end saves anyway
                    save(epoch, batch_index + 1)
        jax.block_until_ready(step_metrics)
        elapsed = time.perf_counter() - timed_start if timed_start is not None else 0.0
        save(epoch + 1, 0)

        # ---- Evaluation and logs.
        train = jax.device_get(step_metrics)
        test = evaluate(parallel, device_state, dataset, config.batch_size)
        record = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * steps_per_epoch,
            "train_loss": float(np.mean([m["loss"] for m in train])) if train else float("nan"),
            "train_accuracy": float(np.mean([m["accuracy"] for m in train])) if train else float("nan"),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "images_per_second": timed_steps * config.batch_size / elapsed if elapsed > 0 else float("nan"),
        }
        log(
            f"epoch {record['epoch']}/{config.num_epochs}  step {record['step']}  "
            f"train loss {record['train_loss']:.4f}  train acc {record['train_accuracy']:.2%}  "
            f"test loss {record['test_loss']:.4f}  test acc {record['test_accuracy']:.2%}  "
            f"{record['images_per_second']:.0f} images/s"
        )
        if is_logging_process():
            with open(os.path.join(workdir, METRICS_FILE), "a") as f:
                f.write(json.dumps(record) + "\n")

    manager.wait_until_finished()
    if not record:  # the checkpoint already held a finished run
        test = evaluate(parallel, device_state, dataset, config.batch_size)
        record = {"epoch": config.num_epochs, "step": latest, "test_loss": test["loss"], "test_accuracy": test["accuracy"]}
    return record
