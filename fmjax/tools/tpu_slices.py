"""Cloud TPU slices by gcloud's accelerator type: their chips, their topology for libtpu, and JAX's platform.

libtpu compiles for a slice's topology without the chips attached; this
module names the slices fmjax knows, turns one into abstract devices, and
keeps JAX off libtpu on machines that have no TPU.
"""

import contextlib
import dataclasses
import functools
import glob
import importlib.util
import math
import os
import re

import jax

from fmjax.errors import UserError

GIB = 2**30
INSTALL_HINT = "pip install -e '.[tpu]' (libtpu, through jax[tpu])"


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's published figures: HBM in bytes, bf16 FLOP/s, HBM bytes/s."""

    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float


# Peak FLOP/s are bf16 matmul rates; float32 matmuls on TPU run as bf16
# passes at JAX's default precision, so they apply to both dtypes.
CHIPS = {
    # cloud.google.com/tpu/docs/v4: 275 TFLOP/s, 32 GiB HBM2, 1,200 GB/s.
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 1200e9),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s, 95 GB HBM2e, 2,765 GB/s.
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2765e9),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s, 16 GB HBM2, 819 GB/s.
    "v5litepod": Chip("TPU v5e", 16 * GIB, 197e12, 819e9),
    # cloud.google.com/tpu/docs/v6e: 918 TFLOP/s, 32 GB HBM, 1,638 GB/s.
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1638e9),
}

# Slice sizes as gcloud's --accelerator-type counts them -> chip grid. v4 and
# v5p count TensorCores (two a chip, run as one "megacore" device); v5e and
# v6e count chips. Hosts hold 4 chips (v4, v5p) or up to 8 (v5e, v6e).
_GRIDS = {
    "v4": {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4"},
    "v5p": {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4"},
    "v5litepod": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8"},
    "v6e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8"},
}
_TOPOLOGY_PREFIX = {"v4": "v4", "v5p": "v5", "v5litepod": "v5e", "v6e": "v6e"}
# PCI ids of attached TPU chips: Google's vendor id and its TPU device ids (v2 to v7).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice by its accelerator type, and the topology libtpu compiles for."""

    accelerator_type: str
    generation: str
    size: int

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def chips(self) -> int:
        return self.size // 2 if self.generation in ("v4", "v5p") else self.size

    @property
    def topology(self) -> str:
        return f"{_TOPOLOGY_PREFIX[self.generation]}:{_GRIDS[self.generation][self.size]}"

    @property
    def chips_per_host(self) -> tuple[int, int, int]:
        if self.generation in ("v4", "v5p") or self.chips == 4:
            return (2, 2, 1)
        return (1, 1, 1) if self.chips == 1 else (2, 4, 1)

    @property
    def hosts(self) -> int:
        return max(self.chips // math.prod(self.chips_per_host), 1)


def sizes_of(generation: str) -> list[int]:
    """The slice sizes fmjax knows for a generation, smallest first."""
    return sorted(_GRIDS[generation])


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def supported_types() -> list[str]:
    return [f"{generation}-{size}" for generation, sizes in _GRIDS.items() for size in sizes]


def parse_accelerator_type(name: str) -> Slice:
    """The Slice of gcloud's --accelerator-type `name` (e.g. "v5litepod-4"); a UserError if unknown."""
    match = re.fullmatch(r"(v\w+?)-(\d+)", name.strip().lower())
    if not match or match.group(1) not in _GRIDS:
        raise UserError(
            f"--tpu {name!r} is not a supported accelerator type; use one of {', '.join(supported_types())}"
        )
    generation, size = match.group(1), int(match.group(2))
    if size not in _GRIDS[generation]:
        raise UserError(
            f"--tpu {name}: {generation} comes as {', '.join(f'{generation}-{s}' for s in _GRIDS[generation])}; "
            "pick one of those"
        )
    return Slice(name.strip().lower(), generation, size)


def use_cpu_without_tpu() -> None:
    """Keeps JAX on the CPU when libtpu is installed but no TPU is attached and nobody chose a platform.

    Without it, JAX starts libtpu on every CPU or laptop run, which prints a
    few lines of TPU-not-found errors. A TPU VM (its chips on PCI), a GPU
    machine, or JAX_PLATFORMS / JAX_FORCE_TPU_INIT set by the user: no change.
    """
    if jax.config.jax_platforms or "JAX_FORCE_TPU_INIT" in os.environ:
        return
    if not libtpu_installed() or _tpu_attached():
        return
    if any(os.path.exists(path) for path in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")):
        return
    jax.config.update("jax_platforms", "cpu")


def _tpu_attached() -> bool:
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        folder = os.path.dirname(vendor)
        with open(vendor) as f, open(os.path.join(folder, "device")) as g:
            if f.read().strip() == _GOOGLE_PCI_VENDOR and g.read().strip() in _TPU_PCI_DEVICES:
                return True
    return False


@contextlib.contextmanager
def quiet_stderr():
    # libtpu, started without a TPU, writes several lines of "cannot find the
    # TPU" to file descriptor 2; a failure still raises, and is reported.
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@functools.cache
def topology_devices(slice_: Slice) -> tuple:
    """The slice's chips as abstract devices, to compile for; a UserError without libtpu."""
    if not libtpu_installed():
        raise UserError(f"--tpu compiles with libtpu, which is not installed; {INSTALL_HINT}")
    from jax.experimental import topologies

    megacore = slice_.generation in ("v4", "v5p")
    # Compiling touches no chip, so another libtpu process (a training run,
    # a second plan) need not hold its lock file against this one.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        with quiet_stderr():
            topology = topologies.get_topology_desc(
                topology_name=slice_.topology,
                platform="tpu",
                chip_config_name="megacore" if megacore else "default",
                chips_per_host_bounds=slice_.chips_per_host,
                num_slices=1,
                wrap=(False, False, False),
            )
    except Exception as e:  # noqa: BLE001 - libtpu's errors have no common public type
        raise UserError(
            f"libtpu could not set up {slice_.topology}: {' '.join(str(e).split())[:300]}; "
            f"check that libtpu matches jax ({INSTALL_HINT})"
        ) from e
    return tuple(topology.devices)
