"""The command lines of train.py and scripts/: flags, config loading, user errors.

A mistake a user can fix (fmjax.errors.UserError, a bad flag, a missing
config file, an unknown config key) prints one line on stderr and exits with
status 2; --verbose shows its traceback as well.

Exit statuses (train.py):
  0    done.
  2    bad input from the user (one line on stderr says what to fix).
  3    training diverged: a loss, gradient or param became NaN or Inf
       (config.halt_on_nonfinite); the line names the step, and the newest
       checkpoint is finite.
  3    also: the training loss grew past config.halt_on_loss_growth times
       the first step's (a divergence that stays finite); the line names the
       step, and the newest checkpoint is from before it.
  4    a file of the run could not be written (no space left on the device,
       no permission, a read-only file system): training stops at once; the
       line names the cause, the file or checkpoint step, and the newest
       complete checkpoint. Free space and run the same command to resume.
  143  stopped by SIGTERM (128 + 15, what a job scheduler expects of a
       terminated job) after saving a checkpoint; the line says which step
       and where, and the same command resumes.
"""

import argparse
import importlib.resources
import json
import os
import re
import sys
from typing import Callable, Optional, Sequence

# TensorFlow, when the tfds source imports it, logs a screenful; fmjax's own lines matter more.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fmjax.errors import UserError, WriteFailure  # noqa: E402

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 4
EXIT_PREEMPTED = 143


def _with_shipped_config(argv: Sequence[str]) -> list[str]:
    """argv with a --config that names a shipped config ("default", "cifar10.py") replaced by its file.

    A path to an existing file is kept as it is, so a user's own config, or
    a file of the same name in the current folder, wins.
    """
    argv = list(argv)
    found = _config_argument(argv)
    if found is None:
        return argv
    position, value = found
    name = value[:-3] if value.endswith(".py") else value
    if os.path.exists(value) or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        return argv
    shipped = importlib.resources.files("fmjax.configs").joinpath(f"{name}.py")
    if shipped.is_file():
        argv[position] = argv[position][: -len(value)] + str(shipped)
    return argv


def shipped_config_names() -> list[str]:
    """The configs that `--config NAME` finds in any folder."""
    return sorted(
        entry.name[:-3]
        for entry in importlib.resources.files("fmjax.configs").iterdir()
        if entry.name.endswith(".py") and not entry.name.startswith("_")
    )


def _config_argument(argv: Sequence[str]) -> Optional[tuple[int, str]]:
    """(position, value) of --config in argv, read before absl parses it; argv[position] ends with the value."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return i, arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return i + 1, argv[i + 1]
    return None


def _config_path(argv: Sequence[str]) -> Optional[str]:
    """The --config value in argv (to name a missing file)."""
    found = _config_argument(argv)
    return found[1] if found else None


def define_common_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
    """Flags every fmjax command takes: --config (with --config.KEY=VALUE overrides), --workdir, --verbose."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "A config file in configs/; override keys with --config.KEY=VALUE.",
        flag_values=flag_values,
        lock_config=True,
        sys_argv=list(argv),  # the overrides to define are read from here
    )
    flags.DEFINE_string(
        "workdir", None, "The run's directory (default: runs/<config name>).", flag_values=flag_values
    )
    flags.DEFINE_bool("verbose", False, "Show tracebacks of errors.", flag_values=flag_values)


class HelpShown(Exception):
    """--help was asked for and printed; the command ends with status 0."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse for fmjax's scripts: a bad flag is a UserError, and --help gives one line a flag."""

    def __init__(self, **kwargs):
        kwargs.setdefault(
            "formatter_class", lambda prog: argparse.HelpFormatter(prog, max_help_position=32, width=1000)
        )
        super().__init__(**kwargs)

    def error(self, message: str):
        raise UserError(f"{message}; run with --help for the flags")


def _print_help(flag_values: flags.FlagValues, summary: str) -> None:
    print(f"{summary}\n\nflags:")
    for name in flag_values:
        flag = flag_values[name]
        if name != flag.name or name.startswith("config."):  # short aliases, config overrides
            continue
        print(f"  --{name}: {flag.help}")


def parse_flags(
    argv: Sequence[str], define_flags: Callable[[flags.FlagValues], None], summary: str = ""
):
    """Parses argv with fmjax's common flags plus `define_flags`'s; user errors raise UserError.

    Returns:
      (flag values, config, workdir).

    Raises:
      HelpShown: after printing one line per flag, when argv asks for --help.
    """
    argv = _with_shipped_config(argv)
    flag_values = flags.FlagValues()
    define_common_flags(flag_values, argv)
    define_flags(flag_values)
    if any(arg in ("--help", "-h", "--helpfull") for arg in argv[1:]):
        _print_help(flag_values, summary)
        raise HelpShown()
    path = _config_path(argv[1:])
    if path is None:
        raise UserError("no config given; pass --config configs/default.py (or another file in configs/)")
    _check_config_file(path)
    _forget_previous_config_module()
    try:
        flag_values(list(argv))
    except flags.Error as e:
        raise UserError(f"{e}; run with --help for the flags") from e
    except AttributeError as e:
        if "get_config" in str(e):
            raise UserError(
                f"config file {path} has no get_config(); define one that returns the config "
                "(see configs/default.py)"
            ) from e
        raise _unknown_key(e) from e
    except KeyError as e:
        raise _unknown_key(e) from e
    except SyntaxError as e:
        raise UserError(f"config file {path} has a syntax error at line {e.lineno}: {e.msg}; fix it") from e
    except Exception as e:  # noqa: BLE001 - the config file's own code failed
        raise UserError(
            f"config file {path} failed to load ({type(e).__name__}: {e}); fix it, or run with "
            "--verbose for the traceback"
        ) from e
    config = flag_values.config
    workdir = flag_values.workdir or os.path.join(
        "runs", os.path.splitext(os.path.basename(path))[0]
    )
    return flag_values, config, workdir


def _forget_previous_config_module() -> None:
    # ml_collections loads a config file as the module "config_config" and, if one is
    # loaded already (a second command in one process), runs the new file in
    # the old module's namespace: a file without get_config() would silently
    # use the previous file's.
    import importlib.machinery

    name = "config_config"  # the flag's name, twice
    loader = getattr(sys.modules.get(name), "__loader__", None)
    if isinstance(loader, importlib.machinery.SourceFileLoader) and loader.name == name:
        del sys.modules[name]


def _check_config_file(path: str) -> None:
    if os.path.isdir(path):
        raise UserError(f"--config {path} is a folder; pass a config file in it, e.g. configs/default.py")
    if not os.path.exists(path):
        raise UserError(
            f"config file {path} does not exist; pass a config file, or a shipped config by name: "
            f"{', '.join(shipped_config_names())}"
        )
    if not os.path.isfile(path):
        raise UserError(f"--config {path} is not a regular file; pass a config file, e.g. configs/default.py")


def _unknown_key(e: Exception) -> UserError:
    """A config override naming no key; ml_collections says: 'KEY'\nDid you mean "OTHER" instead of "KEY"?"""
    message = str(e.args[0]) if e.args else ""
    key = re.search(r"[\w.]+", message)
    suggestion = re.search(r'Did you mean "([\w.]+)"', message)
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    return UserError(
        f"the config has no key {key.group(0) if key else message!r}{hint}; "
        "see fmjax/config.py for every key"
    )


def _quiet_library_logs() -> None:
    # Orbax logs through absl what fmjax reports itself, in one line: a failed
    # write's traceback from its background thread, a missing metadata file.
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.FATAL)


def run(main: Callable[[Sequence[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Runs `main(argv)`, turning a UserError into one line on stderr and exit status 2
    (a WriteFailure: one line and status 4)."""
    argv = list(sys.argv if argv is None else argv)
    verbose = "--verbose" in argv
    if not verbose:
        _quiet_library_logs()
    from fmjax.tools.tpu_slices import use_cpu_without_tpu

    use_cpu_without_tpu()
    try:
        return main(argv)
    except HelpShown:
        return EXIT_OK
    except UserError as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except WriteFailure as e:
        if verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED


def define_distributed_flags(flag_values: flags.FlagValues) -> None:
    """Flags that make this process one of a multi-process run (see fmjax.distributed)."""
    flags.DEFINE_string(
        "coordinator_address", None,
        "HOST:PORT of process 0's coordinator in a multi-process run (or $JAX_COORDINATOR_ADDRESS).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_processes", None, "Processes in the run (or $JAX_NUM_PROCESSES).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "process_id", None, "This process, 0..num_processes-1 (or $JAX_PROCESS_ID).", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "distributed", False,
        "Join a multi-process run that JAX detects (every worker of a TPU VM pod slice).",
        flag_values=flag_values,
    )


def join_process_group(flag_values: flags.FlagValues) -> None:
    """Initialises jax.distributed when the flags or environment name a multi-process run.

    Call it before anything imports the trainer's device code or touches a device.
    """
    from fmjax import distributed

    group = distributed.process_group(
        flag_values.coordinator_address,
        flag_values.num_processes,
        flag_values.process_id,
        auto_detect=flag_values.distributed,
    )
    if group is not None:
        distributed.initialize(group)


def _define_train_flags(flag_values: flags.FlagValues) -> None:
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
    flag_values, config, workdir = parse_flags(
        argv, _define_train_flags, "Trains a config's model: train.py --config CONFIG [--workdir DIR] [--config.KEY=VALUE ...]"
    )
    from fmjax.config_checks import check_config

    check_config(config)  # before any process joins, reads data or writes
    if flag_values.tpu is not None:
        if not flag_values.dry_run:
            raise UserError("--tpu plans a run for a TPU slice; add --dry_run (on the TPU VM, train without --tpu)")
        from fmjax.tools.tpu_plan import tpu_dry_run

        tpu_dry_run(config, flag_values.tpu, argv, flag_values.tpu_candidates, print)
        return EXIT_OK
    join_process_group(flag_values)
    if flag_values.dry_run:
        from fmjax.dry_run import format_plan, plan_run

        print(format_plan(plan_run(config)))
        return EXIT_OK
    import jax

    from fmjax.divergence import LossGrowthError
    from fmjax.preemption import Preempted
    from fmjax.trainer import NonFiniteError, train_and_evaluate

    try:
        record = train_and_evaluate(config, workdir, allow_config_change=flag_values.allow_config_change)
    except Preempted as stop:
        if jax.process_index() == 0:
            print(f"preempted: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (NonFiniteError, LossGrowthError) as error:
        if jax.process_index() == 0:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    if jax.process_index() == 0:
        print(f"test accuracy: {record['test_accuracy']:.2%} (workdir {workdir})")
    return EXIT_OK


def _define_evaluate_flags(flag_values: flags.FlagValues) -> None:
    define_distributed_flags(flag_values)
    flags.DEFINE_integer(
        "step", None, "The checkpoint's step (default: the latest).", flag_values=flag_values
    )


def evaluate_main(argv: Sequence[str]) -> int:
    """scripts/evaluate.py: evaluates a checkpoint's params and writes workdir/eval_<step>.json."""
    flag_values, config, workdir = parse_flags(
        argv, _define_evaluate_flags, "Evaluates a run's checkpoint: evaluate.py --config CONFIG --workdir DIR [--step N]"
    )
    from fmjax.config_checks import check_config

    check_config(config)
    join_process_group(flag_values)
    import jax

    from fmjax import rundir
    from fmjax.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(config, workdir, flag_values.step, figures_dir=workdir)
    if jax.process_index() != 0:  # every process evaluates its share; process 0 reports
        return EXIT_OK
    path = rundir.write_json(workdir, f"eval_{result['step']}.json", result)
    print(
        f"test accuracy: {result['accuracy']:.2%} over {result['num_examples']} examples, "
        f"loss {result['loss']:.4f}, step {result['step']} "
        f"(written to {path}, {', '.join(result['figures'])})"
    )
    return EXIT_OK


def predict_main(argv: Sequence[str]) -> int:
    """scripts/predict.py: the top classes of image files (or folders of them) under a trained run."""
    parser = OneLineArgumentParser(
        description="Classifies image files with a trained run: predict.py --workdir DIR IMAGE [IMAGE ...]"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="Image files, or folders walked for image files (.jpg .png .webp .tif ...).")
    parser.add_argument("--workdir", required=True, help="The run's directory, as train.py wrote it.")
    parser.add_argument("--step", type=int, help="The checkpoint's step (default: the latest).")
    parser.add_argument("--top_k", type=int, default=3, help="Classes listed per image.")
    parser.add_argument("--batch_size", type=int, default=64, help="Images per forward pass.")
    parser.add_argument("--json", action="store_true", help='Print a JSON list of {"path", "predictions": [{"class", "probability"}]}.')
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks of errors.")
    args = parser.parse_args(argv[1:])
    from fmjax.predict import find_image_paths, format_predictions, load_predictor

    paths = find_image_paths(args.images, warn=lambda line: print(line, file=sys.stderr))
    predictor = load_predictor(args.workdir, args.step, args.batch_size)
    results = predictor.predict(paths, args.top_k)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return EXIT_OK


def export_main(argv: Sequence[str]) -> int:
    """scripts/export.py: a trained run as a TensorFlow SavedModel and a jax.export artifact."""
    parser = OneLineArgumentParser(
        description="Exports a trained run for use without fmjax: export.py --workdir DIR --out DIR"
    )
    parser.add_argument("--workdir", required=True, help="The run's directory, as train.py wrote it.")
    parser.add_argument("--out", required=True, help="A new folder for saved_model/, model.jax_export and class_names.json.")
    parser.add_argument("--step", type=int, help="The checkpoint's step (default: the latest).")
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks of errors.")
    args = parser.parse_args(argv[1:])
    from fmjax.export import export_run

    for path in export_run(args.workdir, args.out, args.step):
        print(path)
    return EXIT_OK


LEARNING_CURVES_FILE = "learning_curves.png"


def plot_metrics_main(argv: Sequence[str]) -> int:
    """scripts/plot_metrics.py: learning curves of one or more runs, overlaid, to a PNG."""
    from fmjax.plots import DPI, plot_learning_curves

    parser = OneLineArgumentParser(
        description="Plots learning curves: plot_metrics.py RUN_DIR [RUN_DIR ...] [--out PATH]"
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Run directories train.py wrote.")
    parser.add_argument("--out", help=f"The PNG to write (default: RUN_DIR/{LEARNING_CURVES_FILE} of the first run).")
    parser.add_argument("--dpi", type=int, default=DPI, help="Dots per inch of the PNG.")
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks of errors.")
    args = parser.parse_args(argv[1:])
    out_path = args.out or os.path.join(args.run_dirs[0], LEARNING_CURVES_FILE)
    plot_learning_curves(args.run_dirs, out_path, dpi=args.dpi)
    print(f"learning curves of {len(args.run_dirs)} run(s) written to {out_path}")
    return EXIT_OK


# Console scripts (pyproject.toml): fmjax-train, fmjax-evaluate, fmjax-predict, fmjax-plot.
def train_command() -> None:
    sys.exit(run(train_main))


def evaluate_command() -> None:
    sys.exit(run(evaluate_main))


def predict_command() -> None:
    sys.exit(run(predict_main))


def plot_metrics_command() -> None:
    sys.exit(run(plot_metrics_main))


def export_command() -> None:
    sys.exit(run(export_main))
