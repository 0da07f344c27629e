# The seed as written: its CNN (conv 32 5x5 VALID -> ReLU -> fc1 1000 -> ReLU -> fc2)
# and Adam(lr=1e-3) for 10 epochs on an ImageFolder layout (ROOT/train/<class>/*,
# ROOT/test/<class>/*) resized to 224x224 with pixels in [0, 1].
#
#   python train.py --config configs/seed.py --config.data.root=/path/to/images
#
# Batch size 32: the seed loops over single images, but its intent is shuffled
# mini-batches (a DataLoader); 32 is DataLoader-like and divides by 1 to 32 devices.
# Memory is ruled by fc1, not the batch: 32*220*220 = 1,548,800 inputs x 1000
# = 1.55e9 weights, 6.2 GB in float32, 24.8 GB with its gradient and Adam's two
# moments, while a batch of 32 adds about 0.4 GB of activations.
#
# Devices. Per device, as XLA's memory analysis of the compiled train step puts
# it (batch 32, float32, compiled for CPU devices; other backends schedule
# their buffers differently, so keep a margin):
# - Data parallel with jit (the default parallel mode): every device holds the
#   whole state, 25.9 GB (1.03x the state, gradients and activations). That
#   needs a device of 32 GB or more: an A100 or H100 (80 GB), or a TPU v4
#   chip (32 GiB). A TPU v3 core or v5e chip (16 GiB) cannot hold it. With
#   --config.parallel=pmap XLA keeps three more copies of fc1: 43.4 GB.
# - FSDP, adding --config.parallel=jit --config.shard_params=True: fc1 and its
#   Adam moments are split by output feature, about 14 GB per device on 2
#   devices, 7 GB on 4 and 3.5 GB on 8. So 16 GiB devices train it: 4 or more
#   (a v3-8 slice's 8 cores, a v5e-8's 8 chips), 2 only tightly. Use a device
#   count that divides fc1's 1000 outputs (2, 4, 5, 8, 10, 20, 25, 40, ...): on
#   16, fc1 is split by input instead and XLA gathers it whole on every device
#   (about 14 GB each again).
#
#   python train.py --config configs/seed.py --config.data.root=/path/to/images \
#       --config.parallel=jit --config.shard_params=True
#
# Expect: not measured. No image folder of the seed's kind ships with fmjax, and at
# 224x224 the state (about 25 GB) does not fit the 24 GB, 2-core machine fmjax is
# tested on; the accuracy depends on the user's images.
from fmjax.config import base_config


def get_config():
    config = base_config()
    config.data.source = "image_folder"
    config.data.root = "images"  # holds train/ and test/; override on the command line
    config.image_size = 224
    config.batch_size = 32
    config.num_epochs = 10
    config.learning_rate = 1e-3
    config.model.name = "seed_cnn"
    config.model.hidden = 1000
    return config
