"""Trains a config's model: python train.py --config configs/default.py [--workdir DIR] [--config.KEY=VALUE ...]

Exit statuses: 0 done, 2 bad input (one line on stderr says what to fix; nothing was
touched), 3 diverged (NaN or Inf, or a loss grown past config.halt_on_loss_growth), 4 a
file or checkpoint could not be written (no space, no permission; the line names the
newest complete checkpoint), 143 stopped by SIGTERM after saving a checkpoint (the same
command resumes). A resume with another run-defining config is refused (exit 2) unless
--allow_config_change.
"""

from fmjax import cli

if __name__ == "__main__":
    cli.run_command(cli.train_main)
