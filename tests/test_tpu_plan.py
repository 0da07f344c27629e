"""train.py --dry_run --tpu: fmjax's steps compiled by libtpu for a TPU slice, on this CPU machine.

Everything runs in one subprocess, so libtpu never meets the other tests'
eight fake CPU devices. Most of its time is the seed at 224x224 with FSDP,
compiled once: its train step in about 6 s, its eval step in about 20 s
(XLA's TPU code generation). The replicated seed stops at XLA's quick
out-of-memory refusal, and the suggested command is served from the plan
cache. Every other compile is of the default config at 8x8, batch 8, well
under a second each (at 16x16, batch 64, its train step takes about 4 s).
JAX's persistent compilation cache cannot carry these compiles from one test
session to the next: it writes them, but reading one back needs a TPU client.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from fmjax.tools import tpu_slices
from fmjax.tools.tpu_plan import command_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = os.path.join(ROOT, "configs", "seed.py")

# Each entry: a command's argv after train.py; the script records its exit
# status, stdout and stderr. The last part compiles a small step itself.
SCRIPT = r"""
import contextlib, io, json, sys
import numpy as np
from fmjax import cli
from fmjax.tools import tpu_plan, tpu_slices

def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.run(cli.train_main, ["train.py", *argv])
    return {"status": status, "out": out.getvalue(), "err": err.getvalue()}

commands, size, batch_size = json.loads(sys.argv[1])
results = {name: run(argv) for name, argv in commands.items()}
suggested = [l.split()[2:] for l in results["no_fsdp"]["out"].splitlines() if l.startswith("  python ")]
results["suggested"] = run(suggested[0]) if suggested else None

# The small run's train step, compiled here from fmjax.parallel alone.
import jax
from fmjax.config import base_config
from fmjax.core.build import build
from fmjax.core.losses import get_loss
from fmjax.parallel.data_parallel import make_data_parallel
from fmjax.parallel.interface import global_mesh
from fmjax.parallel.mesh import abstract_state
from jax.sharding import NamedSharding, PartitionSpec
devices = tpu_slices.topology_devices(tpu_slices.parse_accelerator_type("v5litepod-4"))
config = base_config()
config.model.conv = "native"
# As the plan resolves "auto" for a TPU: the update inline.
parallel = make_data_parallel("jit", get_loss("cross_entropy"), shard_params=True, update_in_conditional=False,
                              shard_params_min_size=config.shard_params_min_size, devices=devices)
state = abstract_state(build(config, 10, (size, size, 3)).init_state, parallel.state_sharding)
split = NamedSharding(global_mesh(devices), PartitionSpec("data"))
batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), np.float32, sharding=split),
         "label": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=split)}
epoch = jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(global_mesh(devices), PartitionSpec()))
memory = jax.jit(lambda s, b, e: parallel.train_step(s, b, e), donate_argnums=0).lower(state, batch, epoch).compile().memory_analysis()
results["xla"] = [memory.argument_size_in_bytes, memory.temp_size_in_bytes,
                  memory.output_size_in_bytes, memory.alias_size_in_bytes]

tpu_slices.libtpu_installed = lambda: False
tpu_slices.topology_devices.cache_clear()
tpu_plan._PLANS.clear()
results["no_libtpu"] = run(commands["small"])
print("RESULTS" + json.dumps(results))
"""

# The default config, small enough to compile in about a second for a TPU.
SIZE, BATCH = 8, 8
TINY = [f"--config.image_size={SIZE}"]
SMALL = ["--config", "default", "--dry_run", "--tpu", "v5litepod-4", "--config.shard_params=True",
         *TINY, f"--config.batch_size={BATCH}"]
COMMANDS = {
    "fsdp": ["--config", SEED, "--dry_run", "--tpu", "v5litepod-4", "--config.parallel=jit", "--config.shard_params=True"],
    "no_fsdp": ["--config", SEED, "--dry_run", "--tpu", "v5litepod-4", "--config.parallel=jit", "--tpu_candidates=1"],
    "small": SMALL,
    "multi_host": ["--config", "default", "--dry_run", "--tpu", "v5litepod-16", "--config.batch_size=32", *TINY],
    "unknown": ["--config", "default", "--dry_run", "--tpu", "v9-8"],
    "no_such_size": ["--config", "default", "--dry_run", "--tpu", "v5litepod-3"],
    "odd_v4": ["--config", "default", "--dry_run", "--tpu", "v4-7"],
    "no_dry_run": ["--config", "default", "--tpu", "v5litepod-4"],
    "pmap": ["--config", "default", "--dry_run", "--tpu", "v5litepod-4", "--config.parallel=pmap"],
    "uneven_batch": ["--config", "default", "--dry_run", "--tpu", "v5litepod-4", "--config.batch_size=30"],
    "huge_batch": ["--config", "default", "--dry_run", "--tpu", "v5litepod-1",
                   "--config.batch_size=4194304", "--tpu_candidates=1"],
}


_PLANS = {}


def start_plans():
    """Starts the subprocess of every plan, in the background and at a lower priority.

    conftest calls it once the session has collected this file's tests, so its
    compiles (most of a minute on one core) overlap the test files before this one.
    """
    if "process" not in _PLANS and tpu_slices.libtpu_installed():
        _PLANS["process"] = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, json.dumps([COMMANDS, SIZE, BATCH])],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        os.setpriority(os.PRIO_PROCESS, _PLANS["process"].pid, 10)


@pytest.fixture(scope="module")
def results():
    if not tpu_slices.libtpu_installed():
        pytest.skip("libtpu is not installed (pip install -e '.[test]' installs it)")
    start_plans()
    out, err = _PLANS["process"].communicate(timeout=600)
    assert _PLANS["process"].returncode == 0, err[-3000:]
    return json.loads(out.split("RESULTS", 1)[1])


def step_bytes(out, step):
    line = next(line for line in out.splitlines() if line.startswith(f"{step} step, per chip: arguments"))
    return [int(n.replace(",", "")) for n in re.findall(r"(\d[\d,]*) B", line)]


def test_the_seed_with_fsdp_fits_a_v5litepod_4(results):
    fsdp = results["fsdp"]
    assert fsdp["status"] == 0 and fsdp["out"].splitlines()[-1] == "fits: yes"
    arguments, temps, outputs, aliased, peak = step_bytes(fsdp["out"], "train")
    assert peak == arguments + temps + outputs - aliased
    # fc1's 1.55e9 float32 weights and two Adam moments, split over 4 chips.
    assert arguments > 3 * 4 * 1_548_800_000 / 4
    assert peak < 16 * 2**30


def test_without_fsdp_it_does_not_fit_and_the_suggestion_does(results):
    out = results["no_fsdp"]["out"]
    assert results["no_fsdp"]["status"] == 0
    assert "Ran out of memory" in out and "fits: no" in out
    suggestion = next(line for line in out.splitlines() if line.startswith("  python "))
    assert suggestion.endswith("--tpu v5litepod-4 --config.parallel=jit --config.shard_params=True")
    assert results["suggested"]["out"].splitlines()[-1] == "fits: yes"
    assert step_bytes(results["suggested"]["out"], "train") == step_bytes(results["fsdp"]["out"], "train")


def test_printed_bytes_are_xlas_memory_analysis(results):
    assert results["small"]["status"] == 0
    assert step_bytes(results["small"]["out"], "train")[:4] == results["xla"]


def test_a_slice_of_several_hosts_compiles_for_the_global_batch(results):
    out = results["multi_host"]["out"]
    assert results["multi_host"]["status"] == 0
    assert "16 x TPU v5e (topology v5e:4x4), 2 hosts, each feeding 16; batch 32, 2 per chip" in out
    assert "eval step, per chip" in out and out.endswith("fits: yes\n")


@pytest.mark.parametrize(
    "name, message",
    [
        ("unknown", "'v9-8' is not a supported accelerator type"),
        ("no_such_size", "v5litepod comes as v5litepod-1, v5litepod-4"),
        ("odd_v4", "v4 comes as v4-8, v4-16"),
        ("no_dry_run", "add --dry_run"),
        ("pmap", "add --config.parallel=jit"),
        ("uneven_batch", "does not divide by the 4 devices"),
        ("huge_batch", "nothing tried fits (v5litepod-1 shard_params=True)"),
        ("no_libtpu", "pip install -e '.[tpu]'"),
    ],
)
def test_mistakes_are_one_line_and_status_2(results, name, message):
    result = results[name]
    assert result["status"] == 2
    assert result["err"].count("\n") == 1 and message in result["err"]


def test_a_suggested_command_replaces_the_slice_and_the_parallel_settings():
    slice_ = tpu_slices.parse_accelerator_type("v6e-8")
    argv = ["train.py", "--config", "seed", "--tpu", "v6e-4", "--config.shard_params=False", "--dry_run"]
    assert command_for(argv, slice_, True) == (
        "python train.py --config seed --dry_run --tpu v6e-8 --config.parallel=jit --config.shard_params=True"
    )


def test_slices_map_to_topologies_and_hosts():
    v4 = tpu_slices.parse_accelerator_type("v4-16")
    assert (v4.chips, v4.topology, v4.hosts) == (8, "v4:2x2x2", 2)
    v5e = tpu_slices.parse_accelerator_type("v5litepod-8")
    assert (v5e.chips, v5e.topology, v5e.hosts, v5e.chip.hbm_bytes) == (8, "v5e:2x4", 1, 16 * 2**30)
