"""Eight fake CPU devices for every test, set before jax is first imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

# Tests compare runs at 1e-5; keep matmuls in full float32 on every backend.
jax.config.update("jax_default_matmul_precision", "float32")


def prepared(dataset, batch, epoch=None):
    """A batch of pixels as the model gets it inside the compiled step (dataset.prepare), on the host."""
    import jax

    return jax.device_get(dataset.prepare(batch, epoch))
