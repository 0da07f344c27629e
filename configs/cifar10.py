# The seed's CNN and Adam on CIFAR-10 through TFDS (32x32 RGB), normalised per channel.
#
#   tfds build cifar10 --data_dir ~/tensorflow_datasets   # once, on a machine with network
#   python train.py --config configs/cifar10.py
#
# Expect: not measured. TFDS cannot download data sets on the machine fmjax is
# tested on, so this config is only exercised there with TFDS's mock data.
from fmjax.config import base_config


def get_config():
    config = base_config()
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.image_size = 32
    config.batch_size = 128
    config.num_epochs = 20
    config.data.normalize = True
    # CIFAR-10's training-set channel means and standard deviations.
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2470, 0.2435, 0.2616)
    return config
