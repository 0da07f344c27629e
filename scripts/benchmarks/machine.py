"""The machine measured: its CPU and cores, its matmul rate and its memory bandwidth."""

import importlib.metadata
import os
import platform
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.timing import time_calls
from fmjax.errors import UserError


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name from `cpuinfo` (Linux's format), else what platform says, else "unknown"."""
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def limit_cores(threads: int) -> list[int]:
    """Pins this process to `threads` of the cores it may use; PyTorch uses that many threads.

    Call it before JAX, TensorFlow or PyTorch first compute: XLA's and
    TensorFlow's thread pools size themselves from the cores the process may
    run on, PyTorch's from what it is told.

    Args:
      threads: how many cores, from 1 to the number this process may use.

    Returns:
      The cores the process now runs on.
    """
    available = sorted(os.sched_getaffinity(0))
    if not 1 <= threads <= len(available):
        raise UserError(
            f"--threads {threads} is outside 1..{len(available)}, the cores this "
            "process may use; pick a count in that range"
        )
    import torch

    cores = available[:threads]
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(threads)
    return cores


def machine_info() -> dict[str, Any]:
    """The CPU, the cores this process runs on and the versions that were measured."""
    import tensorflow as tf
    import torch

    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "jax_backend": jax.default_backend(),
        "jax_devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "torch": torch.__version__,
        "tensorflow": tf.__version__,
    }


def machine_line() -> str:
    """One line for a report: the CPU, the cores used, and JAX's version and devices."""
    return (
        f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, "
        f"jax {jax.__version__} on {jax.device_count()} {jax.default_backend()} device(s)"
    )


def matmul_gflops(size: int, warmup: int, repeats: int) -> dict[str, Any]:
    """The machine's float32 matmul rate: a jitted [size, size] @ [size, size].

    Returns:
      {"size", "timing", "gflops"}; gflops counts 2 * size**3 per product.
    """
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    timing = time_calls(lambda: matmul(a, b).block_until_ready(), warmup, repeats)
    return {
        "size": size,
        "timing": timing.as_dict(),
        "gflops": 2 * size**3 / timing.median_s / 1e9,
    }


def memory_bandwidth_gbs(num_floats: int, warmup: int, repeats: int) -> dict[str, Any]:
    """The machine's memory bandwidth: x <- 1.5 x + 1 in place over float32 [num_floats].

    The input is donated, so the output reuses its pages: what is timed is the
    memory traffic, not the kernel handing out fresh pages.

    Returns:
      {"num_floats", "timing", "gbs"}; gbs counts the bytes read and written.
    """
    scale_in_place = jax.jit(lambda x: x * 1.5 + 1.0, donate_argnums=0)
    holder = [jnp.zeros((num_floats,), jnp.float32)]

    def call():
        holder[0] = scale_in_place(holder[0]).block_until_ready()

    timing = time_calls(call, warmup, repeats)
    return {
        "num_floats": num_floats,
        "timing": timing.as_dict(),
        "gbs": 2 * 4 * num_floats / timing.median_s / 1e9,
    }
