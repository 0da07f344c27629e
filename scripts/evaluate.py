"""Evaluates a run's checkpoint: python scripts/evaluate.py --config CONFIG --workdir DIR [--step N]

Loads only the params, prints the accuracy over every test example and writes
DIR/eval_<step>.json. Exit statuses: 0 done, 2 bad input.
"""

from fmjax import cli

if __name__ == "__main__":
    cli.run_command(cli.evaluate_main)
