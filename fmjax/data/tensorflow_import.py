"""TensorFlow, for the few data paths that need it, imported on first use.

Importing TensorFlow takes seconds, so only the TFDS source and 16-bit
colour PNGs pay for it.
"""

import os
import types


def import_tensorflow() -> types.ModuleType:
    """The tensorflow module, with accelerators hidden from it and its C++ start-up lines silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # noqa: PLC0415

    try:
        # TensorFlow only reads data here; left alone it would reserve
        # accelerator memory that JAX needs.
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # Initialised already by whoever imported it first; they chose.
        pass
    return tf
