"""Times fmjax against the seed's PyTorch program on this machine.

python scripts/benchmark.py --out results.json [--markdown results.md]
    [--sizes 32,64] [--batch_size 32] [--repeats 5] [--warmup 2] [--threads N]

Prints a markdown table (train step images/s and ratios to PyTorch eager and
torch.compile, the step's roofline, the input pipelines) and writes every
number to --out. The measurements are in scripts/benchmarks/. On 2 CPU cores
it takes about 4 minutes. Exit statuses: 0 done, 2 bad input.
"""

import json
import os
import sys
import tempfile

from absl import flags
from benchmarks.machine import limit_cores
from benchmarks.report import markdown_report
from benchmarks.suite import run_benchmark

from fmjax import cli
from fmjax.errors import UserError


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "JSON file for every number.", flag_values=flag_values)
    flags.DEFINE_string("markdown", None, "Also write the table to this file.", flag_values=flag_values)
    flags.DEFINE_list("sizes", ["32", "64"], "Input sides, pixels, comma-separated.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 32, "Examples per train step.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("repeats", 5, "Timed calls (epochs for pipelines).", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("warmup", 2, "Untimed calls first.", lower_bound=0, flag_values=flag_values)
    flags.DEFINE_integer(
        "threads", len(os.sched_getaffinity(0)),
        "Cores for every framework (default: all this process may use).", lower_bound=1, flag_values=flag_values,
    )
    flags.DEFINE_bool("no_compile", False, "Skip torch.compile.", flag_values=flag_values)


def main(argv: list[str]) -> int:
    args = cli.parse(argv, __doc__.splitlines()[0], _define_flags, config="none", workdir="none").flags
    if args.out is None:
        raise UserError("no --out given; pass --out FILE.json for every number")
    if not all(size.isdigit() and int(size) > 0 for size in args.sizes):
        raise UserError(f"--sizes {','.join(args.sizes)}: pass positive whole numbers of pixels, e.g. 32,64")
    sizes = [int(size) for size in args.sizes]
    for path in (args.out, args.markdown):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UserError(f"the folder of {path} does not exist; create it or pick another path")

    limit_cores(args.threads)
    with tempfile.TemporaryDirectory() as jpeg_dir:
        results = run_benchmark(
            sizes,
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
    cli.run_command(main)
