"""A run directory: the name and format of every file in it, read and written in one place.

WORKDIR/
  config.json             the run's config, written at every start
  metrics.jsonl           one JSON record per finished epoch
  config_changes.jsonl    what --allow_config_change let differ, one line per resume
  eval_<step>.json        scripts/evaluate.py's result for a checkpoint
  confusion_<step>.png, mistakes_<step>.png   its figures
  learning_curves.png     scripts/plot_metrics.py's figure
  checkpoints/<step>/     Orbax checkpoints (fmjax.run.checkpoint)
  damaged_checkpoints/    steps found unreadable, set aside
  tensorboard/            TensorBoard events (and profiles)
  train.lock              held by the one training in the folder

Each file is written atomically, never through a link (fmjax.run.files).

metrics.jsonl, one JSON record per finished epoch, is read back leniently at
its end only: a last line cut short (by a crash inside a write, from an older
fmjax or another tool) is dropped with a warning, while damage anywhere
before it is an error that names the line and touches nothing.
"""

import json
import os
from typing import Callable

import ml_collections

from fmjax.errors import UserError
from fmjax.run.files import read_regular_file, write_file_atomically

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
LEARNING_CURVES_FILE = "learning_curves.png"
CHECKPOINT_SUBDIR = "checkpoints"
DAMAGED_SUBDIR = "damaged_checkpoints"
EVENTS_SUBDIR = "tensorboard"
LOCK_FILE = "train.lock"


def eval_file(step: int) -> str:
    return f"eval_{step}.json"


def eval_figures(step: int) -> tuple[str, str]:
    """The names of evaluate's confusion matrix and most confident mistakes for a checkpoint."""
    return f"confusion_{step}.png", f"mistakes_{step}.png"


def write_text(workdir: str, name: str, text: str) -> str:
    """Writes `text` as workdir/name atomically; returns the path."""
    path = os.path.join(workdir, name)
    write_file_atomically(path, text.encode())
    return path


def write_json(workdir: str, name: str, value, indent: int = 2) -> str:
    """Writes `value` as JSON to workdir/name atomically; returns the path."""
    return write_text(workdir, name, json.dumps(value, indent=indent) + "\n")


def parse_metrics(text: str, path: str, warn: Callable[[str], None]) -> list[dict]:
    """The records of a metrics.jsonl's text, in order.

    A last line that is not a JSON record (a write cut short) is dropped,
    through `warn`; a bad line before it raises a UserError naming it.
    """
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("not an epoch's record")
        except ValueError:
            if number == len(lines):
                warn(
                    f"warning: the last line of {path} is cut short (a write interrupted); "
                    "dropped, its epoch is trained again"
                )
                continue
            raise UserError(
                f"line {number} of {path} is not an epoch's JSON record; fix or delete that line"
            ) from None
        records.append(record)
    return records


def read_metrics(workdir: str, warn: Callable[[str], None] = print) -> list[dict]:
    """The epoch records of workdir/metrics.jsonl ([] if there is none); see parse_metrics."""
    path = os.path.join(workdir, METRICS_FILE)
    data = read_regular_file(path)
    if data is None:
        return []
    return parse_metrics(data.decode(errors="replace"), path, warn)


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def keep_metrics_through(workdir: str, last_epoch: int, warn: Callable[[str], None] = print) -> None:
    """Rewrites metrics.jsonl without the records of epochs after `last_epoch` (and a cut-short last line).

    A run that stopped before its checkpoint of those epochs was complete
    wrote them; the resumed run writes them again.
    """
    path = os.path.join(workdir, METRICS_FILE)
    data = read_regular_file(path)
    if data is None:
        return
    records = parse_metrics(data.decode(errors="replace"), path, warn)
    kept = [record for record in records if record["epoch"] <= last_epoch]
    text = _jsonl(kept)
    if text.encode() != data:
        write_text(workdir, METRICS_FILE, text)


def append_metrics(workdir: str, record: dict) -> None:
    """Adds one epoch's record to metrics.jsonl by rewriting it whole (it is small), atomically."""
    records = read_metrics(workdir, warn=lambda line: None)
    write_text(workdir, METRICS_FILE, _jsonl([*records, record]))


def append_config_change(workdir: str, record: dict) -> None:
    """Adds one line to config_changes.jsonl, atomically."""
    path = os.path.join(workdir, CONFIG_CHANGES_FILE)
    data = read_regular_file(path) or b""
    if data and not data.endswith(b"\n"):
        data += b"\n"
    write_file_atomically(path, data + (json.dumps(record) + "\n").encode())


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
    """Writes the run's config as config.json; returns the path."""
    return write_text(workdir, CONFIG_FILE, config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config the run in `workdir` trained with, from its config.json.

    Raises:
      UserError: the folder or its config.json is missing, or not a config.
    """
    if not os.path.isdir(workdir):
        raise UserError(f"run directory {workdir} does not exist; pass a --workdir that train.py wrote")
    path = os.path.join(workdir, CONFIG_FILE)
    data = read_regular_file(path)
    if data is None:
        raise UserError(f"{path} is missing; train in {workdir} with train.py, which writes it")
    try:
        value = json.loads(data)
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON ({error}); train in {workdir} again, which rewrites it") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a config (a JSON object); train in {workdir} again, which rewrites it")
    return ml_collections.ConfigDict(value)


def write_eval(workdir: str, result: dict) -> str:
    """Writes evaluate's result for the checkpoint at result["step"]; returns the path."""
    return write_json(workdir, eval_file(result["step"]), result)


def refuse_workdir_in_checkpoints(workdir: str) -> None:
    """Raises a UserError when `workdir` is, or lies in, a run's checkpoint folder.

    That run prunes its old steps, taking along whatever lies in them: another
    run's checkpoints included. Both the path as given and the one its links
    lead to are walked (a run's checkpoint folder may be a link to another disk).
    """
    for start in dict.fromkeys([os.path.abspath(workdir), os.path.realpath(workdir)]):
        path = start
        while True:
            parent = os.path.dirname(path)
            if os.path.basename(path) == CHECKPOINT_SUBDIR and os.path.lexists(os.path.join(parent, LOCK_FILE)):
                raise UserError(
                    f"--workdir {workdir} is in {path}, the checkpoint folder of the run in {parent}; "
                    "pass a folder outside it"
                )
            if parent == path:
                break
            path = parent
