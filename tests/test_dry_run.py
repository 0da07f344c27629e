"""train.py --dry_run counts parameters by hand-checkable numbers, for every config."""

import dataclasses
import glob
import math
import os
import re

import pytest

from fmjax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shipped configs, not configs/__init__.py.
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "[!_]*.py")))


def dry_run(capsys, *argv):
    assert cli.run(cli.train_main, ["train.py", *argv, "--dry_run"]) == 0
    return capsys.readouterr().out


def total_line(out):
    return next(line for line in out.splitlines() if line.strip().startswith("total"))


def test_default_config_total_matches_a_hand_count(capsys):
    out = dry_run(capsys, "--config", os.path.join(ROOT, "configs", "default.py"))
    # 16x16 through a 5x5 VALID conv is 12x12x32 = 4608 inputs to fc1.
    conv1 = 5 * 5 * 3 * 32 + 32
    fc1 = 12 * 12 * 32 * 1000 + 1000
    fc2 = 1000 * 10 + 10
    assert total_line(out).split() == ["total", f"{conv1 + fc1 + fc2:,}"]
    assert f"{fc1:,}" in out
    assert "fits: yes" in out


def test_seed_config_shows_fc1_and_does_not_fit_one_cpu_device(capsys):
    out = dry_run(capsys, "--config", os.path.join(ROOT, "configs", "seed.py"))
    fc1_weights = 32 * 220 * 220 * 1000
    assert fc1_weights == 1_548_800_000
    fc1 = fc1_weights + 1000
    total = (5 * 5 * 3 * 32 + 32) + fc1 + (1000 * 10 + 10)
    assert total_line(out).split() == ["total", f"{total:,}"]
    assert f"{fc1:,}" in out
    # params + gradients + two Adam moments, float32: 4 copies of 4 bytes.
    state_gb = 4 * 4 * total / 1e9
    assert f"{state_gb:,.2f} GB in all" in out
    # 8 CPU devices of this machine's memory cannot each hold ~25 GB.
    assert "fits: no" in out and "shard_params" in out


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_plans(path, capsys):
    out = dry_run(capsys, "--config", path, "--config.image_size=32")
    assert "flops" in out and "devices: 8 x cpu" in out


def test_micro_batches_cut_the_activations_the_dry_run_counts(capsys):
    from fmjax.config import base_config
    from fmjax.tools.dry_run import plan_run

    config = base_config()
    config.batch_size = 64
    config.parallel = "jit"
    whole = plan_run(config)
    config.grad_accum_steps = 4
    micro = plan_run(config)
    batch_bytes = 64 // whole.num_devices * (16 * 16 * 3 * 4 + 4)  # images and labels, counted whole
    assert micro.activation_bytes - batch_bytes == pytest.approx((whole.activation_bytes - batch_bytes) / 4, rel=0.01)
    assert micro.state_bytes == whole.state_bytes


class _Compiled:
    """Stands for a compiled computation whose cost analysis is `analysis`."""

    def __init__(self, analysis):
        self.analysis = analysis

    def cost_analysis(self):
        return self.analysis


def test_xla_cost_adds_the_modules_up_and_says_nan_for_a_missing_count():
    from fmjax.tools.dry_run import xla_cost

    modules = [{"flops": 10.0, "bytes accessed": 4.0}, {"flops": 5.0, "bytes accessed": 2.0}]
    assert xla_cost(_Compiled(modules)) == {"flops": 15.0, "bytes_accessed": 6.0}
    assert xla_cost(_Compiled(modules[0])) == {"flops": 10.0, "bytes_accessed": 4.0}
    partial = xla_cost(_Compiled([{"flops": 10.0}]))
    assert partial["flops"] == 10.0 and math.isnan(partial["bytes_accessed"])
    assert all(math.isnan(count) for count in xla_cost(_Compiled(None)).values())


def test_a_batch_that_training_refuses_the_dry_run_refuses_with_the_same_line(capsys):
    argv = ["train.py", "--config", os.path.join(ROOT, "configs", "default.py"), "--config.batch_size=12", "--dry_run"]
    assert cli.run(cli.train_main, argv) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == (
        "error: config.batch_size=12 does not divide by the 8 devices; set it to a multiple of 8"
    )


POPULATION = ["--config.num_seeds=3", "--config.sweep.learning_rates=1e-3,3e-3", "--config.image_size=8", "--config.model.hidden=32"]


def numbers(line):
    """The integers of a printed line, in order (commas dropped)."""
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", line)]


def line_starting(out, prefix):
    return next(line for line in out.splitlines() if line.startswith(prefix))


def xla_population_bytes(argv, members):
    """XLA's memory for the trainer's own population step (fmjax.parallel, jit on one device), compiled here."""
    import jax
    import numpy as np

    from fmjax.cli.parsing import parse
    from fmjax.core.build import build
    from fmjax.data import prepare_fn
    from fmjax.parallel.data_parallel import parallel_from_config

    config = parse(["train.py", *argv], "", lambda flag_values: None).config
    parallel = parallel_from_config(config, prepare_fn(config), devices=jax.devices()[:1])
    state = jax.eval_shape(build(config, 10, (8, 8, 3)).init_state)
    assert jax.tree.leaves(state)[0].shape[0] == members
    per_device = config.batch_size // jax.device_count()
    batch = {
        "image": jax.ShapeDtypeStruct((per_device, 8, 8, 3), np.float32),
        "label": jax.ShapeDtypeStruct((per_device,), np.int32),
        "index": jax.ShapeDtypeStruct((per_device,), np.int32),
    }
    epoch = jax.ShapeDtypeStruct((), np.int32)
    step = jax.jit(lambda s, b, e: parallel.train_step(s, b, e), donate_argnums=0)
    memory = step.lower(state, batch, epoch).compile().memory_analysis()
    return (
        memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


def test_a_population_prints_its_step_memory_and_how_many_members_fit(capsys):
    argv = ["--config", os.path.join(ROOT, "configs", "default.py"), *POPULATION]
    out = dry_run(capsys, *argv)
    ordinary = dry_run(capsys, "--config", os.path.join(ROOT, "configs", "default.py"), *POPULATION[2:])
    # One member's lines are the ordinary run's.
    assert out.splitlines()[0] == "one member of the population, as its own run:"
    assert total_line(out) == total_line(ordinary)
    assert "population: 6 members (3 seeds x 2 learning rates) in one vmapped train step" in out
    # The population's memory is XLA's for the trainer's step, 8 examples per member on one of 8 devices.
    step = line_starting(out, "population's train step on one device")
    assert "(8 examples per member)" in step
    assert numbers(step)[2] == xla_population_bytes(argv, members=6)
    # The growth is the difference of the two compiles per member, rounded up; the fit follows from it.
    one, one_bytes, six, six_bytes, per_member, shared = numbers(line_starting(out, "per member (estimate"))
    assert (one, six, six_bytes) == (1, 6, numbers(step)[2])
    assert per_member == math.ceil((six_bytes - one_bytes) / 5) and shared == one_bytes - per_member
    assert 0 < shared < one_bytes
    fit, usable, printed_shared, printed_per_member = numbers(line_starting(out, "members that fit one device: about"))
    assert usable == int(0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    assert (printed_shared, printed_per_member) == (shared, per_member)
    assert fit == (usable - shared) // per_member > 6
    assert out.splitlines()[-1] == "fits: yes"


def test_a_population_of_one_member_measures_the_growth_from_two_and_pmap_plans_too(capsys):
    out = dry_run(
        capsys, "--config", os.path.join(ROOT, "configs", "default.py"), "--config.sweep.learning_rates=0.01",
        "--config.image_size=8", "--config.model.hidden=32", "--config.parallel=pmap",
    )
    assert "population: 1 member (1 seed x 1 learning rate)" in out
    one, one_bytes, two, two_bytes, per_member, _ = numbers(line_starting(out, "per member (estimate"))
    assert (one, two) == (1, 2) and per_member == two_bytes - one_bytes > 0
    assert numbers(line_starting(out, "population's train step on one device"))[2] == one_bytes


def test_a_population_that_does_not_fit_says_how_many_members_would():
    from fmjax.tools.population_plan import PopulationPlan, format_population

    plan = PopulationPlan(
        num_members=8, num_seeds=8, num_rates=1, step_memory_bytes=8_200, flops_per_step=1.0,
        batch_per_device=8, reference_members=1, reference_bytes=1_200, usable_bytes=5_000,
    )
    assert (plan.bytes_per_member, plan.shared_bytes, plan.fits) == (1_000, 200, False)
    assert plan.members_that_fit() == 4  # (5,000 - 200) // 1,000
    lines = format_population(plan)
    assert "about 4 (estimate: (5,000 B usable - 200 B shared) / 1,000 B per member, rounded down)" in lines[-2]
    assert lines[-1].startswith("fits: no") and "num_seeds" in lines[-1]
    unknown = format_population(dataclasses.replace(plan, usable_bytes=None))
    assert unknown[-2].startswith("members that fit one device: unknown") and unknown[-1].startswith("fits: unknown")
