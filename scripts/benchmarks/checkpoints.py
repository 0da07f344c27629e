"""What checkpoints cost the train step: none, written synchronously, written asynchronously.

Each variant is a real run of train_and_evaluate on the same config, in a
workdir of its own, with config.checkpoint_every_steps and
config.checkpoint_async set for it. The step time comes from the images/s
that metrics.jsonl records for each epoch: the epoch's timer runs from the
end of its first step (which may compile) to the end of its last, so it
covers the mid-epoch saves and not the epoch-end save or the evaluation.
Epochs after the first are kept, and the variants run in turns, so a
machine that slows down or speeds up during the benchmark weighs on all
three alike.
"""

import copy
import dataclasses
import json
import os
import statistics

import ml_collections

from fmjax.run.rundir import METRICS_FILE
from fmjax.run.trainer import train_and_evaluate

# name -> (config.checkpoint_every_steps is set, config.checkpoint_async)
VARIANTS = {"none": (False, True), "sync": (True, False), "async": (True, True)}


@dataclasses.dataclass(frozen=True)
class CheckpointCost:
    """Median train-step times of each variant.

    Attributes:
      every_steps: the steps between two checkpoints in "sync" and "async".
      step_ms: variant name -> median milliseconds per step.
      samples: variant name -> how many epochs the median is over.
    """

    every_steps: int
    step_ms: dict[str, float]
    samples: dict[str, int]

    def per_checkpoint_ms(self, variant: str) -> float:
        """Milliseconds one checkpoint adds to training in `variant`, over "none"."""
        return (self.step_ms[variant] - self.step_ms["none"]) * self.every_steps

    def overhead(self, variant: str) -> float:
        """The share of step time that checkpoints add in `variant` (0.1 = 10%)."""
        return self.step_ms[variant] / self.step_ms["none"] - 1.0


def measure_checkpoint_cost(
    config: ml_collections.ConfigDict,
    root: str,
    *,
    every_steps: int = 10,
    num_epochs: int = 2,
    rounds: int = 6,
) -> CheckpointCost:
    """Trains `config` once per variant and round, and returns the step times.

    Args:
      config: the config to train (its num_epochs and checkpoint keys are
        replaced per variant).
      root: a folder for the runs' workdirs (one per variant and round).
      every_steps: the checkpoint interval of the "sync" and "async" variants.
      num_epochs: epochs per run; the first is not counted.
      rounds: how many times each variant runs, in turns.
    """
    epoch_ms: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_index in range(rounds):
        for name, (checkpoints, asynchronous) in VARIANTS.items():
            variant = copy.deepcopy(config)
            variant.num_epochs = num_epochs
            variant.checkpoint_every_steps = every_steps if checkpoints else 0
            variant.checkpoint_async = asynchronous
            workdir = os.path.join(root, f"{name}_{round_index}")
            train_and_evaluate(variant, workdir)
            with open(os.path.join(workdir, METRICS_FILE)) as f:
                records = [json.loads(line) for line in f][1:]
            epoch_ms[name] += [1000 * config.batch_size / r["images_per_second"] for r in records]
    return CheckpointCost(
        every_steps=every_steps,
        step_ms={name: statistics.median(ms) for name, ms in epoch_ms.items()},
        samples={name: len(ms) for name, ms in epoch_ms.items()},
    )


def format_report(cost: CheckpointCost, machine: str) -> str:
    """A markdown table of the step times and what a checkpoint adds."""
    lines = [
        f"Checkpoint every {cost.every_steps} steps; {machine}",
        "",
        "| checkpoints | ms per step | added per step | added per checkpoint |",
        "|---|---|---|---|",
        f"| none | {cost.step_ms['none']:.1f} | | |",
    ]
    for name in ("sync", "async"):
        lines.append(
            f"| {name} | {cost.step_ms[name]:.1f} | {cost.overhead(name):+.1%} "
            f"| {cost.per_checkpoint_ms(name):+.0f} ms |"
        )
    lines.append(f"\n(medians over {cost.samples['none']} epochs per variant)")
    return "\n".join(lines)
