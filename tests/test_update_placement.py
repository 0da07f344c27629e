"""train_step's update in a conditional: inline's numbers, and in place under jit and pmap."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY, train

import fmjax
from fmjax.config import base_config
from fmjax.core.losses import cross_entropy
from fmjax.core.models import SeedCNN
from fmjax.core.steps import update_in_conditional
from fmjax.errors import UserError
from fmjax.parallel.interface import drop_index, per_device_steps
from fmjax.run.config_checks import check_config

IMAGE = (16, 16, 3)
# fc1: 12 * 12 * 8 inputs x 256 = 295,000 floats, far the largest array.
FC1_BYTES = 12 * 12 * 8 * 256 * 4


def make_state():
    model = SeedCNN(num_classes=4, features=8, hidden=256)
    return fmjax.create_train_state(
        jax.random.key(0), model, optax.adam(1e-3), jnp.zeros((1, *IMAGE))
    )


def make_batch(seed):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((8, *IMAGE), dtype=np.float32),
        "label": rng.integers(0, 4, 8).astype(np.int32),
    }


def jit_step(in_conditional):
    return jax.jit(
        functools.partial(fmjax.train_step, update_in_conditional=in_conditional),
        donate_argnums=0,
    )


def pmap_step(in_conditional):
    step = functools.partial(
        fmjax.train_step, axis_name="d", update_in_conditional=in_conditional
    )
    return jax.pmap(step, "d", donate_argnums=0)


def one_device(tree):
    return jax.tree.map(lambda x: jnp.asarray(x)[None], tree)


def numbers(state, device_axis):
    """The params and optimizer state as numpy, the device axis dropped."""
    return jax.tree.map(
        lambda x: np.asarray(x[0] if device_axis else x),
        (state.params, state.opt_state),
    )


@pytest.fixture(scope="module")
def compiled():
    """Each of the four steps compiled once, {(mode, in_conditional): compiled step}, and the state they take."""
    state, batch = make_state(), make_batch(0)
    steps = {}
    for in_conditional in (False, True):
        steps["jit", in_conditional] = jit_step(in_conditional).lower(state, batch).compile()
        steps["pmap", in_conditional] = (
            pmap_step(in_conditional).lower(one_device(state), one_device(batch)).compile()
        )
    return steps, state


def test_in_a_conditional_jit_and_pmap_agree_bit_for_bit_and_inline_jit_to_rounding(compiled):
    steps, start_state = compiled
    results = {}
    for (mode, in_conditional), step in steps.items():
        wrap = one_device if mode == "pmap" else (lambda tree: tree)
        # A copy: the steps donate the state they take.
        state = wrap(jax.tree.map(jnp.copy, start_state))
        for seed in range(3):
            state, metrics = step(state, wrap(make_batch(seed)))
        assert bool(np.all(metrics["finite"])) and int(np.ravel(state.step)[0]) == 3
        results[mode, in_conditional] = numbers(state, mode == "pmap")
    start = numbers(start_state, False)
    assert not np.array_equal(results["jit", True][0]["fc1"]["kernel"], start[0]["fc1"]["kernel"])
    chex.assert_trees_all_equal(results["pmap", True], results["jit", True])
    chex.assert_trees_all_equal(results["pmap", False], results["jit", True])
    # Inline under jit, XLA fuses the bias gradients' sums differently: the same to float rounding.
    chex.assert_trees_all_close(results["jit", False], results["jit", True], rtol=1e-5, atol=1e-7)


def temporaries(step):
    return step.memory_analysis().temp_size_in_bytes


def fc1_copies(step):
    return sum(1 for line in step.as_text().splitlines() if " copy(" in line and "1152,256]" in line)


def test_in_a_conditional_pmap_needs_no_more_memory_than_jit_and_copies_no_fc1(compiled):
    steps, _ = compiled
    # Inline, pmap's reshapes keep XLA from updating in place: copies of the params and both moments.
    assert temporaries(steps["pmap", False]) >= temporaries(steps["jit", False]) + 2 * FC1_BYTES
    assert temporaries(steps["pmap", True]) <= temporaries(steps["jit", True]) + FC1_BYTES // 4
    assert fc1_copies(steps["jit", True]) == fc1_copies(steps["pmap", True]) == 0
    # Inline, jit copies fc1's kernel for the products that still read it.
    assert fc1_copies(steps["jit", False]) == 1


def test_a_mean_over_one_device_adds_no_all_reduce(compiled):
    steps, _ = compiled
    assert "all-reduce" not in steps["pmap", True].as_text()


def test_auto_is_a_conditional_on_cpu_only_and_a_bad_choice_is_refused(tmp_path, capsys):
    assert [update_in_conditional(c) for c in ("auto", "conditional", "inline")] == [
        None,
        True,
        False,
    ]
    assert jax.default_backend() == "cpu"
    assert "stablehlo.case" in jit_step(None).lower(make_state(), make_batch(0)).as_text()
    config = base_config()
    config.optimizer.update_placement = "fused"
    with pytest.raises(
        UserError,
        match="config.optimizer.update_placement is 'fused'; use one of auto, conditional, inline",
    ):
        check_config(config)
    with pytest.raises(UserError, match="config.optimizer.update_placement is 'fused'"):
        update_in_conditional("fused")
    assert train(*TINY, "--workdir", str(tmp_path / "run"), "--config.optimizer.update_placement=fused") == 2
    assert capsys.readouterr().err.strip().endswith(
        "config.optimizer.update_placement is 'fused'; use one of auto, conditional, inline"
    )
    assert not (tmp_path / "run").exists()


def test_auto_leaves_a_populations_vmapped_update_inline():
    """Under vmap a conditional becomes a select of both branches, which costs memory."""
    prepare = lambda batch, epoch, seed=None: drop_index(batch, epoch)  # noqa: E731
    state = jax.tree.map(lambda x: jnp.stack([x, x]), make_state())
    memory = {}
    for choice in (None, True, False):
        options = {"check_finite": True, "grad_accum_steps": 1, "update_in_conditional": choice}
        train_step = per_device_steps(cross_entropy, cross_entropy, prepare, options, None, member_seeds=[0, 1])[0]
        compiled = jax.jit(train_step, donate_argnums=0).lower(state, make_batch(0), jnp.int32(0)).compile()
        memory[choice] = compiled.memory_analysis().temp_size_in_bytes
    assert memory[None] == memory[False]
    assert memory[True] >= memory[False] + FC1_BYTES
