"""The command lines of train.py and scripts/: one flag parser and one error policy for every command.

parsing.py reads flags and the config (one way, with one --help format, for
every command); exits.py turns errors into one line and an exit status;
commands.py holds each command's body, a few lines over the library function
it runs.
"""

from fmjax.cli.commands import (
    COMMANDS,
    evaluate_main,
    export_main,
    plot_metrics_main,
    predict_main,
    train_main,
)
from fmjax.cli.exits import (
    EXIT_DIVERGED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_USER_ERROR,
    EXIT_WRITE_FAILED,
    run,
    run_command,
)
from fmjax.cli.parsing import parse, shipped_config_names


# Console scripts (pyproject.toml): fmjax-train, fmjax-evaluate, fmjax-predict, fmjax-plot, fmjax-export.
def train_command() -> None:
    run_command(train_main)


def evaluate_command() -> None:
    run_command(evaluate_main)


def predict_command() -> None:
    run_command(predict_main)


def plot_metrics_command() -> None:
    run_command(plot_metrics_main)


def export_command() -> None:
    run_command(export_main)


__all__ = [
    "COMMANDS",
    "EXIT_DIVERGED",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_USER_ERROR",
    "EXIT_WRITE_FAILED",
    "evaluate_main",
    "export_main",
    "parse",
    "plot_metrics_main",
    "predict_main",
    "run",
    "run_command",
    "shipped_config_names",
    "train_main",
]
