"""Two processes of two CPU devices each train and evaluate exactly as one process of four.

The processes join through jax.distributed on localhost (gloo collectives),
started by fmjax.parallel.distributed.launch_local; a timeout makes a hang fail.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import (
    DEFAULT_CONFIG,
    PREPARED_DIR,
    ROOT,
    checkpoint_arrays,
    newest_step,
    saved_steps,
    train_py,
)

import fmjax
from fmjax.errors import UserError
from fmjax.parallel import distributed

TINY = [
    "--config.image_size=8",
    "--config.model.hidden=32",
    "--config.num_epochs=1",
    "--config.batch_size=64",
    f"--config.data.prepared_dir={PREPARED_DIR}",
]
TIMEOUT_S = 150
MODES = ("pmap", "jit")

# Each process: joins the run the JAX_* variables name (none: one process),
# trains in each mode in WORKDIR/<mode>, evaluates the checkpoint there, and
# process 0 writes WORKDIR/summary.json.
CHILD = textwrap.dedent(
    """
    import json, os, sys
    from fmjax import cli
    from fmjax.cli.parsing import define_distributed_flags, join_process_group
    args = cli.parse(sys.argv, 'a multi-process run', define_distributed_flags)
    config, workdir = args.config, args.workdir
    join_process_group(args.flags)
    import jax
    from fmjax.tools.evaluate import evaluate_checkpoint
    from fmjax.run import trainer
    from fmjax.run.trainer import train_and_evaluate
    if jax.process_index() == 1:
        # Process 1 looks for a checkpoint late: it must not meet a checkpoint
        # folder that process 0 created meanwhile (the Orbax manager each then
        # opens syncs the processes, and the two would wait on each other).
        import time
        look = trainer.newest_meta
        trainer.newest_meta = lambda workdir: (time.sleep(2), look(workdir))[1]
    runs = {}
    for mode in %r:
        config.parallel = mode
        record = train_and_evaluate(config, os.path.join(workdir, mode))
        evaluation = evaluate_checkpoint(os.path.join(workdir, mode), config=config)
        runs[mode] = {
            "test_accuracy": record["test_accuracy"],
            "eval_accuracy": evaluation["accuracy"],
            "eval_examples": evaluation["num_examples"],
        }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump({"processes": jax.process_count(), "devices": jax.device_count(), "runs": runs}, f)
    """
    % (MODES,)
)


def child_command(workdir):
    return [sys.executable, "-c", CHILD, "--config", DEFAULT_CONFIG, "--workdir", str(workdir), *TINY]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(two processes x two devices, one process x four devices): their workdirs, trained."""
    two, one = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one_process")
    group_env = (distributed.COORDINATOR_ADDRESS_ENV, distributed.NUM_PROCESSES_ENV, distributed.PROCESS_ID_ENV)
    env = {k: v for k, v in os.environ.items() if k not in group_env}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    # The reference runs alongside the pair: the machine's cores are shared among the three.
    reference = subprocess.Popen(child_command(one), env=env)
    try:
        status = distributed.launch_local(
            child_command(two), 2, devices_per_process=2, timeout_s=TIMEOUT_S
        )
        reference_status = reference.wait(timeout=TIMEOUT_S)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    assert status == 0, "the two-process run failed (or timed out: 124)"
    assert reference_status == 0, "the one-process run failed"
    return two, one


def summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


@pytest.mark.multiprocess
def test_the_runs_have_the_processes_and_devices_asked_for(runs):
    two, one = runs
    assert (summary(two)["processes"], summary(two)["devices"]) == (2, 4)
    assert (summary(one)["processes"], summary(one)["devices"]) == (1, 4)


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", MODES)
def test_two_processes_end_with_the_params_of_one(runs, mode):
    two, one = runs
    got = fmjax.restore_params(os.path.join(two, mode))
    expected = fmjax.restore_params(os.path.join(one, mode))
    for layer in expected:
        for name in expected[layer]:
            np.testing.assert_allclose(got[layer][name], expected[layer][name], atol=1e-5)


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", MODES)
def test_evaluation_counts_every_test_example_once(runs, mode):
    two, one = runs
    got, expected = summary(two)["runs"][mode], summary(one)["runs"][mode]
    assert got["eval_examples"] == expected["eval_examples"] == 450  # the digits' test split
    assert got["eval_accuracy"] == expected["eval_accuracy"] == got["test_accuracy"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", MODES)
def test_only_process_zero_writes_the_logs(runs, mode):
    two, _ = runs
    with open(os.path.join(two, mode, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1]
    assert saved_steps(os.path.join(two, mode)) == [21]


def test_a_failing_process_stops_the_others_and_its_status_is_returned():
    wait_or_fail = (
        "import os, sys, time\n"
        "if os.environ['JAX_PROCESS_ID'] == '1': sys.exit(3)\n"
        "time.sleep(60)\n"
    )
    assert distributed.launch_local([sys.executable, "-c", wait_or_fail], 2, timeout_s=30) == 3


def test_a_hung_run_is_stopped_at_the_timeout():
    assert distributed.launch_local([sys.executable, "-c", "import time; time.sleep(60)"], 2, timeout_s=1) == 124


def test_the_process_group_comes_from_flags_then_the_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.process_group(environ={}) is None
    assert distributed.process_group(environ=env) == distributed.ProcessGroup("10.0.0.1:8476", 4, 3)
    assert distributed.process_group(process_id=1, environ=env) == distributed.ProcessGroup("10.0.0.1:8476", 4, 1)
    # --distributed alone: JAX detects all three.
    assert distributed.process_group(auto_detect=True, environ={}) == distributed.ProcessGroup(None, None, None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"coordinator_address": "localhost:1234"}, r"also needs --num_processes, --process_id"),
        ({"coordinator_address": "localhost", "num_processes": 2, "process_id": 0}, r"give it as HOST:PORT"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, r"must be in 0\.\.1"),
        ({"coordinator_address": "h:1", "num_processes": 0, "process_id": 0}, r"at least 1"),
    ],
)
def test_a_partial_or_malformed_process_group_is_a_user_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        distributed.process_group(environ={}, **kwargs)


def test_a_malformed_environment_variable_is_a_user_error():
    with pytest.raises(UserError, match=r"JAX_NUM_PROCESSES='two' is not a whole number"):
        distributed.process_group(environ={"JAX_NUM_PROCESSES": "two"})


# ---- Stopping a multi-process run: SIGTERM to one process, SIGKILL of one.

LAUNCH_LOCAL_PY = str(ROOT / "scripts" / "launch_local.py")


def wait_for_step(workdir, step, processes):
    deadline = time.monotonic() + TIMEOUT_S
    while newest_step(workdir) < step:
        assert all(p.poll() is None for p in processes), "a process ended before the signal"
        assert time.monotonic() < deadline, f"no checkpoint of step {step} within {TIMEOUT_S} s"
        time.sleep(0.01)


@pytest.mark.multiprocess
def test_a_sigterm_to_one_process_stops_all_at_one_step_and_the_resume_is_bit_identical(runs, tmp_path):
    reference = os.path.join(runs[0], "pmap")  # two processes of two devices, never stopped
    workdir = tmp_path / "run"
    command = train_py("--config", DEFAULT_CONFIG, "--workdir", str(workdir), *TINY, "--config.parallel=pmap")
    port = distributed.free_port()
    processes = [
        subprocess.Popen(
            [*command, "--config.checkpoint_every_steps=1"],
            env=distributed.local_process_env(i, 2, port, devices_per_process=2),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        wait_for_step(workdir, 3, processes)
        processes[1].send_signal(signal.SIGTERM)
        errors = [p.communicate(timeout=TIMEOUT_S)[1] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in processes] == [143, 143], [e[-2000:] for e in errors]
    stopped = re.findall(r"preempted: stopped by SIGTERM after saving step (\d+) in ", errors[0])
    assert len(stopped) == 1, errors[0][-2000:]
    step = int(stopped[0])
    assert 3 <= step < 21 and newest_step(workdir) == step
    # Both processes wrote their part of that step: it reads back whole here.
    assert int(checkpoint_arrays(workdir, step)["['step']"]) == step

    assert distributed.launch_local(command, 2, devices_per_process=2, timeout_s=TIMEOUT_S) == 0
    got, expected = checkpoint_arrays(workdir, 21), checkpoint_arrays(reference, 21)
    assert got.keys() == expected.keys() and any("opt_state" in key for key in got)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.multiprocess
def test_a_sigkill_of_one_process_ends_the_others_with_a_clear_line(tmp_path):
    workdir = tmp_path / "run"
    launcher = subprocess.Popen(
        [
            sys.executable, LAUNCH_LOCAL_PY, "-n", "2", "--devices_per_process", "1", "--",
            "--config", DEFAULT_CONFIG, "--workdir", str(workdir), *TINY, "--config.checkpoint_every_steps=1",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),  # this checkout's fmjax, as train.py's children get
    )
    try:
        wait_for_step(workdir, 2, [launcher])
        with open(f"/proc/{launcher.pid}/task/{launcher.pid}/children") as f:
            children = sorted(int(pid) for pid in f.read().split())
        assert len(children) == 2
        os.kill(children[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=60)  # a hang fails here
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 128 + signal.SIGKILL, err[-2000:]
    # A child's progress bar may share the launcher's line (no newline after it).
    lines = re.findall(r"launch_local: [^\r\n]*", err)
    assert lines[0] == "launch_local: process 1 was killed by SIGKILL (status 137); stopping the other processes"
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
