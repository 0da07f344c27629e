"""Times fmjax against the seed's PyTorch program on this machine.

python scripts/benchmark.py --out results.json [--markdown results.md]
    [--sizes 32 64] [--batch_size 32] [--repeats 5] [--warmup 2] [--threads N]

Prints a markdown table (train step images/s and ratios to PyTorch eager and
torch.compile, the step's roofline, the input pipelines) and writes every
number to --out. The measurements are in scripts/benchmarks/. On 2 CPU cores
it takes about 4 minutes. Exit statuses: 0 done, 2 bad input.
"""

import json
import os
import sys
import tempfile

from benchmarks.machine import limit_cores
from benchmarks.report import markdown_report
from benchmarks.suite import run_benchmark
from fmjax import cli
from fmjax.errors import UserError


def main(argv: list[str]) -> int:
    parser = cli.OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for every number.")
    parser.add_argument("--markdown", help="Also write the table to this file.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="Input sides, pixels.")
    parser.add_argument("--batch_size", type=int, default=32, help="Examples per train step.")
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

    limit_cores(args.threads)
    with tempfile.TemporaryDirectory() as jpeg_dir:
        results = run_benchmark(
            args.sizes,
            args.batch_size,
            args.warmup,
            args.repeats,
            jpeg_dir,
            compile_torch=not args.no_compile,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    report = markdown_report(results)
    print(report)
    with open(args.out, "w") as out:
        json.dump(results, out, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(report)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))
