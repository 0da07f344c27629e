"""Runs train.py as N processes of one multi-process run on this machine.

    python scripts/launch_local.py -n 2 [--devices_per_process 2] -- --config configs/default.py --workdir /tmp/run

Each process reads its share of every batch and joins the run through a
coordinator on a free localhost port (the JAX_* variables of
fmjax.parallel.distributed). The exit status is the first failing process's; the other
processes are then stopped.
"""

import argparse
import os
import sys

from fmjax.parallel.distributed import launch_local

TRAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--num_processes", type=int, required=True, help="processes to start")
    parser.add_argument(
        "--devices_per_process", type=int, default=None,
        help="CPU devices each process sees (default: XLA's, one CPU device)",
    )
    parser.add_argument("--timeout_s", type=float, default=None, help="stop every process after this long")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train.py's flags")
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if args.num_processes < 1:
        parser.error(f"-n is {args.num_processes}; start at least 1 process")
    return launch_local(
        [sys.executable, TRAIN_PY, *train_args],
        args.num_processes,
        devices_per_process=args.devices_per_process,
        timeout_s=args.timeout_s,
    )


if __name__ == "__main__":
    sys.exit(main())
