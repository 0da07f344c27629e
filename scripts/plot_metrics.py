"""Plots learning curves: python scripts/plot_metrics.py RUN_DIR [RUN_DIR ...] [--out PATH]

Reads each run's metrics.jsonl and draws train and test loss and accuracy
against epoch, the runs overlaid and named by their folders, to one PNG
(default: learning_curves.png in the first run's folder). Exit statuses: 0
done, 2 bad input.
"""

from fmjax import cli

if __name__ == "__main__":
    cli.run_command(cli.plot_metrics_main)
