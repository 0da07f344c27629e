# The embedded default: the seed's CNN and Adam on scikit-learn's handwritten digits
# (no download), resized to 16x16.
#
#   python train.py --config configs/default.py
#
# Expect: MEASURED_PLACEHOLDER
from fmjax.config import base_config


def get_config():
    config = base_config()
    return config
