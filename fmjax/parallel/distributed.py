"""Runs of several processes: joining one, and starting one on this machine.

A multi-process run has one process per host (a TPU VM pod slice has one per
worker). Every process calls `initialize` before anything touches a device:
jax.distributed must be set up before JAX creates its backends. Each process
then sees every device of the run in `jax.devices()` and its own in
`jax.local_devices()`.

Where a process learns its place in the run, in this order:
- the arguments of `process_group` (train.py's --coordinator_address,
  --num_processes, --process_id);
- the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
- with `auto_detect` (train.py's --distributed), JAX itself, from the cluster
  it runs on (Cloud TPU, SLURM, Open MPI).
Given none of these, the run is one process and nothing is initialised.

`launch_local` starts N processes on this machine that join one run, to try a
multi-process run (and test it) without a cluster.
"""

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Mapping, Optional, Sequence

from fmjax.errors import UserError

COORDINATOR_ADDRESS_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a multi-process run; None lets JAX detect it.

    Attributes:
      coordinator_address: HOST:PORT where process 0 serves the coordinator.
      num_processes: how many processes take part.
      process_id: this process, in [0, num_processes).
    """

    coordinator_address: Optional[str]
    num_processes: Optional[int]
    process_id: Optional[int]


def process_group(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    auto_detect: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> Optional[ProcessGroup]:
    """The group this process joins, from the arguments, then `environ`; None for a single process.

    Args:
      coordinator_address, num_processes, process_id: given values, which win
        over the environment's.
      auto_detect: let JAX detect what is still unknown (Cloud TPU, SLURM,
        Open MPI); without it, all three must be known.
      environ: where JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
        JAX_PROCESS_ID are read.

    Raises:
      UserError: the values are partial (and auto_detect is off) or malformed.
    """
    if coordinator_address is None:
        coordinator_address = environ.get(COORDINATOR_ADDRESS_ENV) or None
    if num_processes is None:
        num_processes = _int_from_env(environ, NUM_PROCESSES_ENV)
    if process_id is None:
        process_id = _int_from_env(environ, PROCESS_ID_ENV)
    given = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    if all(value is None for value in given.values()) and not auto_detect:
        return None
    missing = [flag for flag, value in given.items() if value is None]
    if missing and not auto_detect:
        raise UserError(
            f"a multi-process run also needs {', '.join(missing)} (or "
            f"{NUM_PROCESSES_ENV}, {PROCESS_ID_ENV}, {COORDINATOR_ADDRESS_ENV}); "
            "or pass --distributed to let JAX detect the cluster"
        )
    if coordinator_address is not None:
        _check_address(coordinator_address)
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num_processes is {num_processes}; it must be at least 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise UserError(
            f"--process_id is {process_id}; with --num_processes={num_processes} "
            f"it must be in 0..{num_processes - 1}"
        )
    return ProcessGroup(coordinator_address, num_processes, process_id)


def _int_from_env(environ: Mapping[str, str], name: str) -> Optional[int]:
    value = environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not a whole number; set it to one or unset it") from None


def _check_address(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"--coordinator_address is {address!r}; give it as HOST:PORT, e.g. 10.0.0.1:8476"
        )


def initialize(group: ProcessGroup) -> None:
    """Joins `group`'s run; call it once, before any JAX computation or device query."""
    import jax

    # CPU devices of different processes reach each other only through a
    # collectives library; gloo is the one built into jaxlib. Accelerators
    # use their own interconnect and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=group.coordinator_address,
            num_processes=group.num_processes,
            process_id=group.process_id,
        )
    except ValueError as e:  # what auto-detection could not find
        raise UserError(
            f"--distributed found no cluster to join ({e}); on a machine that is not a "
            "TPU pod, SLURM or Open MPI job, pass --coordinator_address, --num_processes "
            "and --process_id"
        ) from e


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def local_process_env(
    process_id: int,
    num_processes: int,
    port: int,
    devices_per_process: Optional[int] = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """The environment of process `process_id` of a run on this machine.

    Args:
      devices_per_process: when given, how many CPU devices XLA shows each
        process (--xla_force_host_platform_device_count), to stand in for a
        host's accelerators.
    """
    env = dict(environ)
    env[COORDINATOR_ADDRESS_ENV] = f"localhost:{port}"
    env[NUM_PROCESSES_ENV] = str(num_processes)
    env[PROCESS_ID_ENV] = str(process_id)
    if devices_per_process is not None:
        flags = [
            flag
            for flag in env.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")
        ]
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def launch_local(
    command: Sequence[str],
    num_processes: int,
    *,
    devices_per_process: Optional[int] = None,
    timeout_s: Optional[float] = None,
    poll_interval_s: float = 0.2,
) -> int:
    """Runs `command` as `num_processes` processes of one run on this machine.

    Each process gets the coordinator on a free localhost port and its own
    JAX_PROCESS_ID. When one fails (or is killed), the others are stopped:
    they would otherwise wait for it in a collective until JAX's heartbeat
    timeout. One line on stderr says which process ended and how, and one
    more for each process that had to be killed.

    Args:
      command: the program and its arguments, e.g. [python, "train.py", ...].
      devices_per_process: CPU devices each process sees (see local_process_env).
      timeout_s: stop every process after this many seconds; None waits forever.
      poll_interval_s: how often the processes are checked.

    Returns:
      0 when every process succeeded; else the exit status of the first to
      fail, or 124 when the timeout stopped them.
    """
    port = free_port()
    processes = [
        subprocess.Popen(
            list(command),
            env=local_process_env(i, num_processes, port, devices_per_process),
        )
        for i in range(num_processes)
    ]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    grace_s = 10
    try:
        while True:
            statuses = [p.poll() for p in processes]
            failed = [(i, s) for i, s in enumerate(statuses) if s not in (None, 0)]
            if failed:
                index, status = failed[0]
                if any(s is None for s in statuses):
                    _say(f"process {index} {_ended(status)}; stopping the other processes")
                # After a SIGTERM (143) the others are saving the same step;
                # after any other end they wait on the missing process forever.
                grace_s = 10 if shell_status(status) == 143 else 2
                return shell_status(status)
            if all(s == 0 for s in statuses):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                _say(f"the run did not end within {timeout_s:g} s; stopping every process")
                return 124
            time.sleep(poll_interval_s)
    finally:
        _stop(processes, grace_s)


def shell_status(status: int) -> int:
    """A Popen return code as a shell reports it: a process killed by signal N is 128 + N."""
    return status if status >= 0 else 128 - status


def _ended(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name} (status {shell_status(status)})"
    return f"exited with status {status}"


def _say(line: str) -> None:
    print(f"launch_local: {line}", file=sys.stderr, flush=True)


def _stop(processes: Sequence[subprocess.Popen], grace_s: float = 10) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for index, process in enumerate(processes):
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            # Waiting on a dead peer (a SIGTERM makes it save, with every process).
            _say(f"process {index} did not stop within {grace_s:g} s of SIGTERM; killed it")
            process.kill()
            process.wait()
