"""The base config every file in configs/ starts from; it names every key."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """All keys with their defaults: the seed's model and Adam on the embedded digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # model init and the shuffle order of every epoch
    # A population (fmjax.core.population): num_seeds members per learning rate,
    # seeds seed, seed + 1, ..., trained at once; with data on the devices each equals its own run.
    config.num_seeds = 1
    config.sweep = ml_collections.ConfigDict()
    config.sweep.learning_rates = ()  # each a member's rate; () = just learning_rate
    config.num_epochs = 10
    config.batch_size = 64  # global: over all devices and processes
    config.learning_rate = 1e-3
    config.image_size = 16  # pixels; images are resized to image_size x image_size
    config.num_classes = 10  # used when the data does not say (and by a dry run)
    # "jit" (one program over a Mesh, the batch sharded) or "pmap": about as
    # fast as each other on CPU, in the same memory (see optimizer.update_placement).
    config.parallel = "jit"
    # jit only: shard params and optimizer state over the devices (FSDP), each
    # array along its last dimension that divides by the device count.
    config.shard_params = False
    config.shard_params_min_size = 2**16  # elements; smaller arrays stay replicated
    config.checkpoint_every_steps = 0  # besides every epoch's end; 0 = only there
    # An epoch's end saves only if the run's last save (or its start) was at least
    # this long ago; the last step, checkpoint_every_steps and a SIGTERM always
    # save. A kill loses at most this much and an epoch. 0 = every epoch's end.
    config.checkpoint_min_seconds = 60.0
    # With data on the devices, steps run in compiled loops of about this many
    # seconds; between them the host checks for SIGTERM (so a stop waits at
    # most about this long) and for due checkpoints.
    config.host_check_seconds = 2.0
    # When stderr is not a terminal (a file, CI), no progress bar: one line per
    # epoch, and one within an epoch at most this often.
    config.progress_line_seconds = 120.0
    # Trace this many steps after the first compilation with jax.profiler into
    # WORKDIR/tensorboard (TensorBoard's Profile tab); 0 = off.
    config.profile_steps = 0
    # Compiled programs kept between runs (JAX's persistent cache); "" = off.
    config.compilation_cache_dir = "~/.cache/fmjax/jax"
    config.keep_checkpoints = 3  # the newest this many are kept
    # Write each checkpoint in a background thread while training goes on
    # (False: training waits for the write).
    config.checkpoint_async = True
    # zstd-compress the checkpoint's arrays. Float32 params and Adam moments
    # barely shrink (the seed's model at 16x16: 51 MB against 55 MB) for about
    # 0.07 s more CPU a checkpoint, taken from training on a small machine.
    config.checkpoint_compression = False
    # Stop, naming the step, when a loss, gradient or updated param is NaN or
    # Inf; nothing non-finite is saved.
    config.halt_on_nonfinite = True
    # Stop, naming the step, when a step's training loss exceeds this many
    # times the run's first loss (or 1, whichever is larger): a run whose
    # updates stay finite can still diverge (Adam at a rate of 1e6 reaches a
    # loss of 1e21). Exit status 3, as for NaN; 0 = off.
    config.halt_on_loss_growth = 1e4
    config.loss = "cross_entropy"  # or "mse" (against one-hot targets)
    config.label_smoothing = 0.0  # cross_entropy in training: weight spread over all classes
    config.grad_clip_norm = 0.0  # clip gradients to this global norm; 0 = off
    # Each device's batch as this many micro-batches in one compiled loop: the
    # same update (to float rounding) with 1/k of the activation memory.
    config.grad_accum_steps = 1

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "constant"  # as the seed; or "warmup_cosine" or "step"
    config.schedule.warmup_epochs = 0.0  # warmup_cosine: linear from 0 to learning_rate
    config.schedule.end_learning_rate = 0.0  # warmup_cosine: at the last step
    config.schedule.decay_epochs = (30, 60)  # step: epochs where the rate is multiplied...
    config.schedule.decay_factor = 0.1  # ...by this

    config.data = ml_collections.ConfigDict()
    config.data.source = "digits"  # "digits", "image_folder" or "tfds"
    config.data.root = ""  # image_folder: a folder with train/ and test/
    config.data.name = ""  # tfds: the data set's name, e.g. "mnist"
    config.data.data_dir = ""  # tfds: where it is prepared; "" = TFDS's default
    config.data.test_fraction = 0.25  # digits: share of the 1797 images held out
    config.data.split_seed = 0  # digits: the fixed train/test split
    config.data.normalize = False  # (x - mean) / std per channel after [0, 1]
    config.data.mean = (0.5, 0.5, 0.5)
    config.data.std = (0.5, 0.5, 0.5)
    # Training-only augmentation; the seed has none.
    config.data.random_crop_padding = 0  # pixels of zero padding, then a random crop back; 0 = off
    config.data.horizontal_flip = False  # flip each training image with probability 1/2
    # Where the decoded, resized pixels live: "device" (both splits on every
    # device; batches gathered there inside the compiled step), "host" (host
    # memory), "none" (decoded batch by batch, for data sets larger than
    # memory), or "auto": device if they fit device_cache_mb, else host if
    # they fit host_cache_mb, else none.
    config.data.cache = "auto"
    config.data.device_cache_mb = 2048.0  # MiB per device
    config.data.host_cache_mb = 8192.0  # MiB
    # image_folder: an image that cannot be read (damaged, truncated, not an
    # image): "error" stops naming the file; "skip" leaves it out and lists it.
    config.data.on_bad_image = "error"
    # Where digits keep their train/test split, and image folders loaded whole
    # their decoded, resized pixels, between runs (a later run reads them
    # instead); "" = off.
    config.data.prepared_dir = "~/.cache/fmjax/prepared"

    config.model = ml_collections.ConfigDict()
    config.model.name = "seed_cnn"  # "seed_cnn", "mlp" or "resnet"
    config.model.features = 32  # seed_cnn: conv1's output channels
    config.model.kernel_size = 5  # seed_cnn: conv1's square kernel, VALID padding
    config.model.hidden = 1000  # seed_cnn: fc1's width
    config.model.mlp_hidden = (1000,)  # mlp: the hidden layers' widths
    config.model.activation = "relu"  # "relu", "sigmoid" or "tanh"
    config.model.resnet_stage_sizes = (2, 2, 2, 2)  # resnet: blocks per stage (ResNet-18)
    config.model.resnet_width = 64  # resnet: the first stage's channels, doubled per stage
    # Activations and matmuls; params and optimizer state stay float32.
    config.model.dtype = "float32"  # or "bfloat16" (mixed precision)
    # seed_cnn: how conv1 is computed, the same function either way: "slices"
    # (shifted windows and one matmul, fastest on CPU), "native" (lax.conv,
    # fastest on GPU and TPU) or "auto" (by the backend).
    config.model.conv = "auto"
    # seed_cnn and mlp: how the dense layers multiply, the same function either
    # way: "kernel_in_front" (the input's gradient as kernel @ dy.T, fastest on
    # CPU), "plain" (Flax's own) or "auto" (by the backend).
    config.model.dense = "auto"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # "adam" or "sgd"
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.momentum = 0.0  # sgd; 0 = plain gradient descent
    config.optimizer.nesterov = False  # sgd
    config.optimizer.weight_decay = 0.0  # L2 added to the gradient; 0 = off
    # Where the update is computed, the same numbers either way: "conditional"
    # (after every gradient, in a lax.cond: in place on CPU, where it saves
    # copies of fc1), "inline" (where XLA puts it; less memory on TPU and for
    # a population, whose vmap makes a conditional a select) or "auto" (by
    # the backend, and inline for a population).
    config.optimizer.update_placement = "auto"
    return config
