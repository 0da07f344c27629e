"""What a checkpoint costs the train step, written synchronously and asynchronously.

python scripts/benchmark_checkpoints.py --config configs/default.py [--every 10]
    [--epochs 2] [--rounds 6] [--config.KEY=VALUE ...]

Trains the config without mid-epoch checkpoints, then with one every --every
steps written synchronously, then asynchronously (see
scripts/benchmarks/checkpoints.py), --rounds times in turns, and prints a
markdown table of the median step times. The runs' workdirs are temporary.
Many short rounds weigh a machine whose load changes on all variants alike.
On 2 CPU cores, configs/default.py takes about 2 minutes. Exit statuses: 0
done, 2 bad input.
"""

import contextlib
import io
import tempfile

from absl import flags

from fmjax import cli


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_integer("every", 10, "Steps between two checkpoints.", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("epochs", 2, "Epochs per run; the first is not counted.", lower_bound=2, flag_values=flag_values)
    flags.DEFINE_integer("rounds", 6, "Runs of each variant, in turns.", lower_bound=1, flag_values=flag_values)


def main(argv: list[str]) -> int:
    args = cli.parse(argv, __doc__.splitlines()[0], _define_flags, workdir="none")
    flag_values, config = args.flags, args.config
    # Imported once the flags are good: a bad flag is reported without starting JAX.
    from benchmarks.checkpoints import format_report, measure_checkpoint_cost
    from benchmarks.machine import machine_line

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
    print(format_report(cost, machine_line()))
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run_command(main)
