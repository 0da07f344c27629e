"""Orbax checkpoints restore across device counts and into the right model only."""

import gc
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fmjax
from fmjax.core.losses import cross_entropy
from fmjax.core.models import SeedCNN
from fmjax.errors import UserError
from fmjax.parallel.data_parallel import make_data_parallel
from fmjax.parallel.mesh import abstract_state
from fmjax.run import checkpoint as ckpt

# Runs in a child process with ONE device: restores `workdir`'s latest
# checkpoint (or trains and saves one) and writes its params to an .npz.
CHILD = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import fmjax
    from fmjax.run import checkpoint as ckpt
    from fmjax.core.models import SeedCNN
    from fmjax.parallel.data_parallel import make_data_parallel
    from fmjax.parallel.mesh import abstract_state
    from fmjax.core.losses import cross_entropy

    action, workdir, out = sys.argv[1:]
    assert jax.device_count() == 1
    state_fn = lambda: fmjax.create_train_state(
        jax.random.key(0), SeedCNN(4, features=4, hidden=16), optax.adam(1e-2), jnp.zeros((1, 8, 8, 3)))
    parallel = make_data_parallel("pmap", cross_entropy)
    manager = ckpt.checkpoint_manager(workdir)
    if action == "restore":
        state, meta = ckpt.restore_checkpoint(
            manager, manager.latest_step(), abstract_state(state_fn, parallel.state_sharding))
        assert meta == {"epoch": 1, "next_batch": 0}, meta
    else:
        state = state_fn()
        batch = {"image": np.ones((4, 8, 8, 3), np.float32), "label": np.arange(4, dtype=np.int32)}
        device_state = parallel.put_state(state)
        for _ in range(2):
            device_state, _ = parallel.train_step(device_state, parallel.put_batch(batch))
        state = parallel.get_state(device_state)
        ckpt.save_checkpoint(manager, state, {"epoch": 1, "next_batch": 0})
        manager.wait_until_finished()
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
    np.savez(out, step=int(state.step), **{jax.tree_util.keystr(p): v for p, v in leaves})
    """
)


def run_child_on_one_device(action, workdir, out):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, action, str(workdir), str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(np.load(out))


def state_fn(hidden=16):
    return fmjax.create_train_state(
        jax.random.key(0), SeedCNN(4, features=4, hidden=hidden), optax.adam(1e-2), jnp.zeros((1, 8, 8, 3))
    )


def params_by_path(params):
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(params))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def test_saved_on_eight_devices_restores_on_one(tmp_path):
    parallel = make_data_parallel("pmap", cross_entropy)
    device_state = parallel.put_state(state_fn())
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((8, 8, 8, 3), dtype=np.float32), "label": rng.integers(0, 4, 8).astype(np.int32)}
    for _ in range(3):
        device_state, _ = parallel.train_step(device_state, parallel.put_batch(batch))
    state = parallel.get_state(device_state)
    manager = ckpt.checkpoint_manager(str(tmp_path))
    ckpt.save_checkpoint(manager, state, {"epoch": 1, "next_batch": 0})
    manager.wait_until_finished()

    restored = run_child_on_one_device("restore", tmp_path, tmp_path / "restored.npz")
    assert int(restored.pop("step")) == 3
    expected = params_by_path(state.params)
    assert restored.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(restored[key], expected[key])


@pytest.fixture(scope="module")
def saved_on_one_device(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_device")
    return workdir, run_child_on_one_device("train", workdir, workdir / "saved.npz")


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_saved_on_one_device_restores_on_eight(saved_on_one_device, mode):
    tmp_path, saved = saved_on_one_device
    saved = dict(saved)
    parallel = make_data_parallel(mode, cross_entropy)
    manager = ckpt.checkpoint_manager(str(tmp_path))
    state, meta = ckpt.restore_checkpoint(manager, 2, abstract_state(state_fn, parallel.state_sharding))
    assert meta == {"epoch": 1, "next_batch": 0}
    assert int(state.step) == int(saved.pop("step")) == 2
    restored = params_by_path(state.params)
    for key in saved:
        np.testing.assert_array_equal(restored[key], saved[key])
    # The restored state trains on all eight devices.
    device_state = parallel.put_state(state)
    batch = {"image": np.ones((8, 8, 8, 3), np.float32), "label": np.zeros(8, np.int32)}
    device_state, metrics = parallel.train_step(device_state, parallel.put_batch(batch))
    assert int(parallel.get_state(device_state).step) == 3
    assert np.isfinite(float(metrics["loss"]))

    # restore_params reads the params alone, with no config.
    params = params_by_path(fmjax.restore_params(str(tmp_path)))
    for key in saved:
        np.testing.assert_array_equal(params[key], saved[key])


def test_a_checkpoint_of_another_model_is_a_user_error(tmp_path):
    manager = ckpt.checkpoint_manager(str(tmp_path))
    ckpt.save_checkpoint(manager, state_fn(hidden=16), {"epoch": 0, "next_batch": 0})
    manager.wait_until_finished()
    target = abstract_state(lambda: state_fn(hidden=32), jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    with pytest.raises(UserError, match=r"from another model \(params\['fc1'\]\['bias'\]: checkpoint \(16,\), config \(32,\)\)"):
        ckpt.restore_checkpoint(manager, 0, target)


def test_restore_params_without_a_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint in"):
        fmjax.restore_params(str(tmp_path))


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


@pytest.mark.parametrize("written_compressed", [True, False])
def test_either_compression_restores_through_a_manager_of_the_other(tmp_path, written_compressed):
    # Zeros compress: the compressed write must be the smaller one on disk.
    state = state_fn(hidden=256)
    state = state.replace(params=jax.tree.map(jnp.zeros_like, state.params))
    manager = ckpt.checkpoint_manager(str(tmp_path), compression=written_compressed)
    ckpt.save_checkpoint(manager, state, {"epoch": 0, "next_batch": 0})
    manager.wait_until_finished()
    size = directory_bytes(tmp_path / "checkpoints" / "0")
    params_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state.params))
    assert (size < params_bytes / 4) if written_compressed else (size > params_bytes)

    reader = ckpt.checkpoint_manager(str(tmp_path), compression=not written_compressed)
    target = abstract_state(lambda: state_fn(hidden=256), jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    restored, meta = ckpt.restore_checkpoint(reader, 0, target)
    assert meta == {"epoch": 0, "next_batch": 0}
    for key, value in params_by_path(state.params).items():
        np.testing.assert_array_equal(params_by_path(restored.params)[key], value)


def test_a_discarded_managers_write_in_flight_is_not_inherited(tmp_path):
    # A manager waited on through Orbax alone leaves its step recorded as in
    # flight. Keyed by id(), that record outlived the manager, and the next
    # manager given the same id failed its first save over a step it never wrote.
    gc.collect()
    records_before = len(ckpt._step_in_flight)
    manager = ckpt.checkpoint_manager(str(tmp_path / "first"))
    ckpt.save_checkpoint(manager, state_fn(hidden=16).replace(step=3), {"epoch": 0, "next_batch": 0})
    manager.close()  # through Orbax alone: fmjax's record of the step stays
    assert len(ckpt._step_in_flight) == records_before + 1
    del manager
    gc.collect()
    assert len(ckpt._step_in_flight) == records_before
    later = ckpt.checkpoint_manager(str(tmp_path / "second"))
    ckpt.save_checkpoint(later, state_fn(hidden=16), {"epoch": 0, "next_batch": 0})
    ckpt.close_manager(later)
    assert later.all_steps() == [0]
