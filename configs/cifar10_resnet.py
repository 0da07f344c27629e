# A stronger baseline than the seed's model: ResNet-18 (CIFAR stem, BatchNorm) on
# CIFAR-10 through TFDS, SGD with Nesterov momentum, warm-up and cosine decay, padded
# random crops and flips.
#
#   tfds build cifar10 --data_dir ~/tensorflow_datasets   # once, on a machine with network
#   python train.py --config configs/cifar10_resnet.py --config.parallel=jit
#
# Expect: not measured here (TFDS cannot download on the 2-core CPU machine fmjax is
# tested on, and 200 epochs of ResNet-18 need an accelerator). The published figure
# for this recipe is about 93% test accuracy (ResNet-18, SGD 0.1, cosine, 200 epochs,
# crop and flip; e.g. the pytorch-cifar reference results, 93.02%).
from fmjax.config import base_config


def get_config():
    config = base_config()
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.data.normalize = True
    # CIFAR-10's training-set channel means and standard deviations.
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2470, 0.2435, 0.2616)
    config.data.random_crop_padding = 4
    config.data.horizontal_flip = True
    config.image_size = 32
    config.batch_size = 128
    config.num_epochs = 200
    config.model.name = "resnet"
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.learning_rate = 0.1
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 2.0
    return config
