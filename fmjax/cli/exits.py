"""One policy for how every command ends: a user's mistake is one line on stderr and a documented status.

A mistake a user can fix (fmjax.errors.UserError, a bad flag, a missing
config file, an unknown config key) prints one line on stderr and exits with
status 2; --verbose shows its traceback as well.

Exit statuses (train.py; the other commands use 0, 2 and 4):
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

import gc
import sys
from typing import Callable, NoReturn, Optional, Sequence

from fmjax.errors import UserError, WriteFailure

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 4
EXIT_PREEMPTED = 143


class HelpShown(Exception):
    """--help was asked for and printed; the command ends with status 0."""


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


def run_command(main: Callable[[Sequence[str]], int]) -> NoReturn:
    """Runs `main` on sys.argv as `run` does, then exits the process with its status.

    For a command's entry point only. Everything still alive is first moved
    out of the garbage collector's reach (gc.freeze): the interpreter's last
    collections would otherwise walk every object a training run leaves,
    about 0.4 s of its exit. fmjax's files and checkpoints are closed by then;
    an object kept alive only by a reference cycle is not finalized.
    """
    status = run(main)
    gc.freeze()
    raise SystemExit(status)
