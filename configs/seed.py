# The seed as written: its CNN (conv 32 5x5 VALID -> ReLU -> fc1 1000 -> ReLU -> fc2)
# and Adam(lr=1e-3) for 10 epochs on an ImageFolder layout (ROOT/train/<class>/*,
# ROOT/test/<class>/*) resized to 224x224 with pixels in [0, 1].
#
#   python train.py --config configs/seed.py --config.data.root=/path/to/images
#
# Batch size 32: the seed loops over single images, but its intent is shuffled
# mini-batches (a DataLoader); 32 is DataLoader-like and divides by 1 to 32 devices.
# Memory is ruled by fc1, not the batch: 32*220*220 = 1,548,800 inputs x 1000
# = 1.55e9 weights, 6.2 GB in float32, about 25 GB with its gradient and Adam's
# two moments, while a batch of 32 adds about 0.4 GB of activations.
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
