"""Plots learning curves: python scripts/plot_metrics.py RUN_DIR [RUN_DIR ...] [--out PATH]

Reads each run's metrics.jsonl and draws train and test loss and accuracy
against epoch, the runs overlaid and named by their folders, to one PNG
(default: learning_curves.png in the first run's folder). Exit statuses: 0
done, 2 bad input.
"""

import argparse
import os
import sys

from fmjax import cli  # first: it quiets TensorFlow's start-up logs
from fmjax.errors import UserError
from fmjax.plots import DPI, plot_learning_curves

DEFAULT_FILE_NAME = "learning_curves.png"


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        # A bad flag is a user error: one line, status 2, as for every fmjax command.
        raise UserError(f"{message}; run with --help for the flags")


def main(argv: list[str]) -> int:
    parser = _OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Run directories train.py wrote.")
    parser.add_argument(
        "--out", help=f"The PNG to write (default: RUN_DIR/{DEFAULT_FILE_NAME} of the first run)."
    )
    parser.add_argument("--dpi", type=int, default=DPI, help="Dots per inch of the PNG.")
    parser.add_argument("--verbose", action="store_true", help="Show tracebacks of errors.")
    args = parser.parse_args(argv[1:])

    out_path = args.out or os.path.join(args.run_dirs[0], DEFAULT_FILE_NAME)
    plot_learning_curves(args.run_dirs, out_path, dpi=args.dpi)
    print(f"learning curves of {len(args.run_dirs)} run(s) written to {out_path}")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))
