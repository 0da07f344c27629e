"""Each command's body: parse its flags, call one library function, print its result.

train.py and the scripts in scripts/ call these through fmjax.cli.run, which
turns errors into one line and an exit status (fmjax.cli.exits).
"""

import json
import os
import sys
from typing import Callable, Sequence

from absl import flags

from fmjax.cli.exits import EXIT_DIVERGED, EXIT_OK, EXIT_PREEMPTED
from fmjax.cli.parsing import define_distributed_flags, join_process_group, parse
from fmjax.errors import UserError


def _train_flags(flag_values: flags.FlagValues) -> None:
    define_distributed_flags(flag_values)
    flags.DEFINE_bool(
        "dry_run",
        False,
        "Plan the run (parameters, memory, flops, whether it fits) without reading data or training.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "tpu", None,
        "With --dry_run: compile for this Cloud TPU slice (gcloud's --accelerator-type, e.g. v5litepod-4) "
        "with libtpu, on any machine, and say whether it fits.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "tpu_candidates", 4,
        "With --tpu, when the slice does not fit: how many other slices and FSDP settings to compile.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "allow_config_change",
        False,
        "Resume even though the config or data differ from the checkpoint's (e.g. a new learning "
        "rate); the changes are recorded in WORKDIR/config_changes.jsonl.",
        flag_values=flag_values,
    )


def train_main(argv: Sequence[str]) -> int:
    """train.py: trains the config's model in --workdir, resuming from its latest checkpoint."""
    args = parse(argv, "Trains a config's model: train.py --config CONFIG [--workdir DIR] [--config.KEY=VALUE ...]", _train_flags)
    from fmjax.run.config_checks import check_config

    check_config(args.config)  # before any process joins, reads data or writes
    if args.flags.tpu is not None:
        if not args.flags.dry_run:
            raise UserError("--tpu plans a run for a TPU slice; add --dry_run (on the TPU VM, train without --tpu)")
        from fmjax.tools.tpu_plan import tpu_dry_run

        tpu_dry_run(args.config, args.flags.tpu, argv, args.flags.tpu_candidates, print)
        return EXIT_OK
    join_process_group(args.flags)
    if args.flags.dry_run:
        from fmjax.tools.dry_run import format_plan, plan_run

        print(format_plan(plan_run(args.config)))
        return EXIT_OK
    import jax

    from fmjax.run.trainer import (
        LossGrowthError,
        NonFiniteError,
        Preempted,
        train_and_evaluate,
    )

    try:
        record = train_and_evaluate(args.config, args.workdir, allow_config_change=args.flags.allow_config_change)
    except Preempted as stop:
        if jax.process_index() == 0:
            print(f"preempted: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (NonFiniteError, LossGrowthError) as error:
        if jax.process_index() == 0:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    if jax.process_index() == 0 and "members" in record:
        best = record["members"][record["best_member"]]
        print(
            f"test accuracy: {record['test_accuracy']:.2%} (the mean of {len(record['members'])} members; best "
            f"{best['test_accuracy']:.2%}, member {record['best_member']}: seed {best['seed']}, learning rate "
            f"{best['learning_rate']:g}) (workdir {args.workdir})"
        )
    elif jax.process_index() == 0:
        print(f"test accuracy: {record['test_accuracy']:.2%} (workdir {args.workdir})")
    return EXIT_OK


def _step_flag(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).", flag_values=flag_values)


def _evaluate_flags(flag_values: flags.FlagValues) -> None:
    define_distributed_flags(flag_values)
    _step_flag(flag_values)


def evaluate_main(argv: Sequence[str]) -> int:
    """scripts/evaluate.py: evaluates a checkpoint's params and writes workdir/eval_<step>.json."""
    args = parse(
        argv,
        "Evaluates a run's checkpoint: evaluate.py --workdir DIR [--step N] [--config CONFIG [--config.KEY=VALUE ...]]",
        _evaluate_flags,
        config="optional",
    )
    if args.config is not None:
        from fmjax.run.config_checks import check_config

        check_config(args.config)
    join_process_group(args.flags)
    import jax

    from fmjax.run import rundir
    from fmjax.tools.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.workdir, args.flags.step, config=args.config, figures_dir=args.workdir)
    if jax.process_index() != 0:  # every process evaluates its share; process 0 reports
        return EXIT_OK
    path = rundir.write_eval(args.workdir, result)
    for index, member in enumerate(result.get("members", [])):
        print(
            f"member {index} (seed {member['seed']}, learning rate {member['learning_rate']:g}): "
            f"test accuracy {member['accuracy']:.2%}, loss {member['loss']:.4f}"
        )
    if "members" in result:
        print(f"best: member {result['best_member']}")
    print(
        f"test accuracy: {result['accuracy']:.2%} over {result['num_examples']} examples, "
        f"loss {result['loss']:.4f}, step {result['step']} "
        f"(written to {path}, {', '.join(result['figures'])})"
    )
    return EXIT_OK


def _predict_flags(flag_values: flags.FlagValues) -> None:
    _step_flag(flag_values)
    flags.DEFINE_integer("top_k", 3, "Classes listed per image.", flag_values=flag_values)
    flags.DEFINE_integer(
        "member", None,
        "Of a population: the member to predict with (default: the best by test accuracy, as the run recorded it).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("batch_size", 64, "Images per forward pass.", flag_values=flag_values)
    flags.DEFINE_bool(
        "json", False, 'Print a JSON list of {"path", "predictions": [{"class", "probability"}]}.', flag_values=flag_values
    )


def predict_main(argv: Sequence[str]) -> int:
    """scripts/predict.py: the top classes of image files (or folders of them) under a trained run."""
    args = parse(
        argv,
        "Classifies image files with a trained run: predict.py --workdir DIR IMAGE [IMAGE ...]",
        _predict_flags,
        config="none",
        workdir="required",
        inputs=("IMAGE", "Image files, or folders walked for image files (.jpg .png .webp .tif ...)."),
    )
    from fmjax.tools.predict import find_image_paths, format_predictions, load_predictor

    paths = find_image_paths(args.inputs, warn=lambda line: print(line, file=sys.stderr))
    predictor = load_predictor(args.workdir, args.flags.step, args.flags.batch_size, args.flags.member)
    results = predictor.predict(paths, args.flags.top_k)
    print(json.dumps(results, indent=2) if args.flags.json else format_predictions(results))
    return EXIT_OK


def _export_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "out", None, "A new folder for saved_model/, model.jax_export and class_names.json.", flag_values=flag_values
    )
    _step_flag(flag_values)


def export_main(argv: Sequence[str]) -> int:
    """scripts/export.py: a trained run as a TensorFlow SavedModel and a jax.export artifact."""
    args = parse(
        argv,
        "Exports a trained run for use without fmjax: export.py --workdir DIR --out DIR",
        _export_flags,
        config="none",
        workdir="required",
    )
    if args.flags.out is None:
        raise UserError("no --out given; pass --out DIR, a new folder for the exported model")
    from fmjax.tools.export import export_run

    for path in export_run(args.workdir, args.flags.out, args.flags.step):
        print(path)
    return EXIT_OK


def _plot_flags(flag_values: flags.FlagValues) -> None:
    from fmjax.run.rundir import LEARNING_CURVES_FILE
    from fmjax.tools.plots import DPI

    flags.DEFINE_string(
        "out", None, f"The PNG to write (default: RUN_DIR/{LEARNING_CURVES_FILE} of the first run).", flag_values=flag_values
    )
    flags.DEFINE_integer("dpi", DPI, "Dots per inch of the PNG.", flag_values=flag_values)


def plot_metrics_main(argv: Sequence[str]) -> int:
    """scripts/plot_metrics.py: learning curves of one or more runs, overlaid, to a PNG."""
    args = parse(
        argv,
        "Plots learning curves: plot_metrics.py RUN_DIR [RUN_DIR ...] [--out PATH]",
        _plot_flags,
        config="none",
        workdir="none",
        inputs=("RUN_DIR", "Run directories that train.py wrote."),
    )
    from fmjax.run.rundir import LEARNING_CURVES_FILE
    from fmjax.tools.plots import plot_learning_curves

    out_path = args.flags.out or os.path.join(args.inputs[0], LEARNING_CURVES_FILE)
    plot_learning_curves(args.inputs, out_path, dpi=args.flags.dpi)
    print(f"learning curves of {len(args.inputs)} run(s) written to {out_path}")
    return EXIT_OK


# Every command, by its console script's name (pyproject.toml).
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "fmjax-train": train_main,
    "fmjax-evaluate": evaluate_main,
    "fmjax-predict": predict_main,
    "fmjax-export": export_main,
    "fmjax-plot": plot_metrics_main,
}
