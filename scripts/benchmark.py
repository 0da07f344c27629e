"""Times fmjax against the seed's PyTorch program on this machine.

python scripts/benchmark.py --out results.json [--markdown results.md]
    [--sizes 32 64] [--batch_size 32] [--repeats 5] [--warmup 2] [--threads N]

Prints a markdown table (train step images/s and ratios to PyTorch eager and
torch.compile, the step's roofline, the input pipelines) and writes every
number to --out. On 2 CPU cores it takes about 4 minutes. Exit statuses: 0
done, 2 bad input.
"""

import argparse
import json
import os
import sys
import tempfile

# TensorFlow (tf.data) logs a screenful at import; the table matters more.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fmjax import benchmark  # noqa: E402
from fmjax.errors import UserError  # noqa: E402

EXIT_USER_ERROR = 2


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        # A bad flag is a user error: one line, status 2, as for every fmjax command.
        raise UserError(f"{message}; run with --help for the flags")


def main(argv: list[str]) -> int:
    parser = _OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for every number.")
    parser.add_argument("--markdown", help="Also write the table to this file.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="Input sides, pixels.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="Timed calls (epochs for pipelines).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed calls first.")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)),
        help="Cores for every framework (default: all this process may use).",
    )
    parser.add_argument("--no_compile", action="store_true", help="Skip torch.compile.")
    args = parser.parse_args(argv[1:])
    for path in (args.out, args.markdown):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UserError(f"the folder of {path} does not exist; create it or pick another path")

    benchmark.limit_cores(args.threads)
    with tempfile.TemporaryDirectory() as jpeg_dir:
        results = benchmark.run_benchmark(
            args.sizes,
            args.batch_size,
            args.warmup,
            args.repeats,
            jpeg_dir,
            compile_torch=not args.no_compile,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    report = benchmark.markdown_report(results)
    print(report)
    with open(args.out, "w") as out:
        json.dump(results, out, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
