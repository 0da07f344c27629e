"""train.py --dry_run counts parameters by hand-checkable numbers, for every config."""

import glob
import math
import os

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
