"""A resumed run is the same run: what a checkpoint records of its config, and the comparison on resume.

Every checkpoint's meta holds `run_record(config, dataset)`: the whole
config, flattened to dotted keys, plus what the data turned out to be (its
class names and number of training images). A resume compares the newest
checkpoint's record with the config and data it is given; a difference in any
key that decides the numbers is refused (exit 2), naming the keys and both
values, before anything in the workdir is touched.

Every key decides the numbers unless MAY_CHANGE_ON_RESUME names it: a key
added to the config is compared from the start, so forgetting to classify it
refuses a resume (loud and safe) rather than mixing two runs (silent). A key
absent from an older checkpoint's record is not compared. --allow_config_change
continues anyway, on purpose (fine-tuning at a new rate): the resume says
which keys changed and appends them to config_changes.jsonl.
"""

from typing import Any, Callable, Optional, Sequence

import ml_collections

from fmjax.errors import UserError
from fmjax.run import rundir

RECORD_KEY = "run"  # in a checkpoint's meta

# Keys that change how a run is carried out, never its numbers. A key added to
# the config that is harmless to change on resume goes here; see the README.
MAY_CHANGE_ON_RESUME = {
    "num_epochs": "train further, or stop sooner (not with the warmup_cosine schedule, which spans them)",
    "checkpoint_every_steps": "when checkpoints are written",
    "checkpoint_min_seconds": "when checkpoints are written",
    "keep_checkpoints": "how many are kept",
    "checkpoint_async": "whether writes overlap training",
    "checkpoint_compression": "how checkpoints are stored; either kind is read back",
    "halt_on_nonfinite": "whether a NaN stops the run",
    "halt_on_loss_growth": "when a growing loss stops the run",
    "parallel": "pmap or jit: the same numbers on the same devices",
    "shard_params": "where the state lives, not its values",
    "shard_params_min_size": "where the state lives, not its values",
    "data.data_dir": "where TFDS keeps a prepared data set",
    "data.cache": "where the pixels wait, not their values",
    "data.device_cache_mb": "where the pixels wait, not their values",
    "data.host_cache_mb": "where the pixels wait, not their values",
    "data.prepared_dir": "where prepared data are kept between runs, the same values either way",
    "host_check_seconds": "how often the host looks in, not what the steps compute",
    "compilation_cache_dir": "where compiled programs are kept between runs",
    "progress_line_seconds": "how often a log file hears of an epoch's progress",
    "profile_steps": "what is traced, not what is computed",
    "optimizer.update_placement": "where XLA computes the update: the same update to float rounding",
    "grad_accum_steps": "the same update to float rounding, in less memory (a resume on a smaller device)",
}
# Data facts recorded beside the config, with their names in messages.
DATA_FACTS = {"data:class_names": "the class names", "data:train_examples": "the number of training images"}


def _json_ready(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_ready(item) for item in value]
    return value


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _json_ready(value)
    return flat


def run_record(config: ml_collections.ConfigDict, class_names: Sequence[str], train_examples: int) -> dict[str, Any]:
    """What a checkpoint records of the run: {dotted config key: value, "data:...": fact}, JSON-ready."""
    record = _flatten(config.to_dict())
    record["data:class_names"] = list(class_names)
    record["data:train_examples"] = int(train_examples)
    return record


def may_change(key: str, current: dict[str, Any]) -> bool:
    """Whether `key` may differ on resume, given the current record (num_epochs depends on the schedule)."""
    if key == "num_epochs":
        return current.get("schedule.name") != "warmup_cosine"
    return key in MAY_CHANGE_ON_RESUME


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for each run-defining key that differs, sorted by key.

    A key absent from `saved` (a config key newer than the checkpoint) is not compared.
    """
    return [
        (key, saved[key], value)
        for key, value in sorted(current.items())
        if key in saved and not may_change(key, current) and not _same(saved[key], value)
    ]


def _name(key: str) -> str:
    return DATA_FACTS.get(key, f"config.{key}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    """E.g. "config.optimizer.name 'adam' -> 'sgd', config.grad_clip_norm 0.0 -> 1.0"."""
    return ", ".join(f"{_name(key)} {_shown(old)} -> {_shown(new)}" for key, old, new in changes)


def check_resume(
    saved_meta: Optional[tuple[int, dict]],
    current: dict[str, Any],
    workdir: str,
    allow_change: bool,
    warn: Callable[[str], None],
) -> list[tuple[str, Any, Any]]:
    """Refuses a resume whose config or data differ from the checkpoint's, unless `allow_change`.

    Args:
      saved_meta: (step, meta) of the newest checkpoint whose meta reads, or None.
      current: run_record of the config and data of this run.
      workdir: named in the messages.
      allow_change: --allow_config_change: warn and go on.
      warn: prints one line.

    Returns:
      The differences let through (empty unless allow_change).

    Raises:
      UserError: a difference, without allow_change.
    """
    if saved_meta is None:
        return []
    step, meta = saved_meta
    saved = dict(meta.get(RECORD_KEY, {}))
    # Checkpoints older than the full record still hold the class names and image size.
    saved.setdefault("data:class_names", meta.get("class_names"))
    saved.setdefault("image_size", meta.get("image_size"))
    saved = {key: value for key, value in saved.items() if value is not None}
    changes = differences(saved, current)
    if not changes:
        return []
    if not allow_change:
        raise UserError(
            f"{workdir} holds another run (checkpoint step {step}): {describe(changes)}; "
            "resume with the run's values, pass another --workdir, or pass "
            "--allow_config_change to continue with the new ones on purpose"
        )
    warn(
        f"warning: continuing the run in {workdir} from step {step} with a changed config "
        f"(--allow_config_change): {describe(changes)}; recorded in {rundir.CONFIG_CHANGES_FILE}"
    )
    return changes


def record_changes(workdir: str, step: int, changes: list[tuple[str, Any, Any]]) -> None:
    """Appends the changes a resume let through to workdir/config_changes.jsonl."""
    if changes:
        rundir.append_config_change(
            workdir, {"step": step, "changed": {key: [old, new] for key, old, new in changes}}
        )
