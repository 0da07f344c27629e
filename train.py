"""Trains a config's model: python train.py --config configs/default.py [--workdir DIR] [--config.KEY=VALUE ...]

Exit statuses: 0 done, 2 bad input (one line on stderr says what to fix), 3 diverged
(NaN or Inf), 143 stopped by SIGTERM after saving a checkpoint (the same command resumes).
"""

import sys

from fmjax import cli

if __name__ == "__main__":
    sys.exit(cli.run(cli.train_main))
