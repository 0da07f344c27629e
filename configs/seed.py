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
# TPU slices. Per chip, as XLA for TPU compiles the train step (batch 32,
# float32, jit) with libtpu on a CPU machine: `train.py --dry_run --tpu SLICE`
# (pip install -e '.[tpu]'); not run on a TPU. Peak = arguments + outputs +
# temporaries - donated; time and images/s are a roofline from the chip's
# published FLOP/s and HBM bandwidth (the step is bound by HBM traffic).
#
#   slice        chips  HBM/chip   replicated (default)        FSDP (shard_params=True)
#   v4-8           4    32 GiB     24.78 GB, 69.2 ms,  462/s    5.51 GB, 13.8 ms, 2,328/s
#   v5litepod-4    4    16 GiB     no: XLA needs 23.08G temps   5.71 GB, 19.8 ms, 1,613/s
#   v5litepod-8    8    16 GiB     no: XLA needs 23.08G temps   3.04 GB, 10.7 ms, 2,997/s
#   v5p-8          4    95 GiB     24.94 GB, 27.5 ms, 1,162/s   5.56 GB,  5.6 ms, 5,747/s
#   v6e-4          4    32 GiB     24.84 GB, 50.7 ms,  632/s    5.56 GB,  9.9 ms, 3,238/s
#
# So on v5e (16 GiB) the seed needs FSDP; with it every slice above trains the
# seed with room to spare. Use a chip count that divides fc1's 1000 outputs.
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
