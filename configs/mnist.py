# The seed's CNN and Adam on MNIST through TFDS (28x28 grayscale, shown as 3 channels).
#
#   tfds build mnist --data_dir ~/tensorflow_datasets   # once, on a machine with network
#   python train.py --config configs/mnist.py
#
# Expect: not measured. TFDS cannot download data sets on the machine fmjax is
# tested on, so this config is only exercised there with TFDS's mock data.
from fmjax.config import base_config


def get_config():
    config = base_config()
    config.data.source = "tfds"
    config.data.name = "mnist"
    config.image_size = 28
    config.batch_size = 128
    config.num_epochs = 5
    return config
