"""Eight fake CPU devices for every test, set before jax is first imported."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

# The benchmarks and the seed's PyTorch models (scripts/benchmarks/, not installed)
# import as `benchmarks`, as they do when scripts/benchmark.py runs.
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

# Tests compare runs at 1e-5; keep matmuls in full float32 on every backend.
jax.config.update("jax_default_matmul_precision", "float32")


def prepared(dataset, batch, epoch=None):
    """A batch of pixels as the model gets it inside the compiled step (dataset.prepare), on the host."""
    import jax

    return jax.device_get(dataset.prepare(batch, epoch))


def checkpoint_arrays(workdir, step):
    """The params, optimizer state and step of a run's checkpoint, by tree path, as numpy arrays."""
    import numpy as np
    import orbax.checkpoint as ocp

    from fmjax.run import checkpoint as ckpt

    manager = ckpt.checkpoint_manager(str(workdir), create=False)
    metadata = manager.item_metadata(step)["state"]
    item = {key: metadata[key] for key in ("params", "opt_state", "step")}
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item),
                partial_restore=True,
            )
        ),
    ).state
    return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(restored)}
