"""What a checkpoint costs the train step, written synchronously and asynchronously.

python scripts/benchmark_checkpoints.py --config configs/default.py [--every 10]
    [--epochs 2] [--rounds 6] [--config.KEY=VALUE ...]

Trains the config without mid-epoch checkpoints, then with one every --every
steps written synchronously, then asynchronously (see
fmjax.checkpoint_benchmark), --rounds times in turns, and prints a markdown
table of the median step times. The runs' workdirs are temporary. Many short
rounds weigh a machine whose load changes on all variants alike. On 2 CPU
cores, configs/default.py takes about 2 minutes. Exit statuses: 0 done, 2
bad input.
"""

import contextlib
import io
import os
import platform
import sys
import tempfile

from absl import flags

from fmjax import cli


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_integer("every", 10, "Steps between two checkpoints.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("epochs", 2, "Epochs per run; the first is not counted.", lower_bound=2, flag_values=flag_values)
    flags.DEFINE_integer("rounds", 6, "Runs of each variant, in turns.", lower_bound=1, flag_values=flag_values)


def _machine() -> str:
    import jax

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores, "
        f"jax {jax.__version__} on {jax.device_count()} {jax.default_backend()} device(s)"
    )


def main(argv: list[str]) -> int:
    flag_values, config, _ = cli.parse_flags(argv, _define_flags)
    from fmjax.checkpoint_benchmark import format_report, measure_checkpoint_cost

    with tempfile.TemporaryDirectory() as root:
        # The runs' own epoch lines and progress bars would bury the table.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cost = measure_checkpoint_cost(
                config,
                root,
                every_steps=flag_values.every,
                num_epochs=flag_values.epochs,
                rounds=flag_values.rounds,
            )
    print(format_report(cost, _machine()))
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))
