"""fmjax measured against the seed's PyTorch program, on one machine in one run.

What is timed, each with warm-up calls first and then `repeats` calls whose
median is reported with its spread:

- the train step (forward, backward and Adam update) of fmjax, through both
  data-parallel forms of fmjax.parallel (pmap and jit), and of the seed's model in PyTorch,
  eager and under torch.compile;
- the machine's float32 matmul rate and memory bandwidth, which with XLA's
  cost analysis of the compiled step give the step's roofline bound;
- the input pipeline on a folder of JPEGs: fmjax's streamed one (PIL in
  threads, as with data.cache="none") against the PIL loader torchvision's
  ImageFolder and a 2-worker DataLoader amount to.

Fairness: `limit_cores` pins the whole process (XLA's, PyTorch's and
TensorFlow's thread pools alike) to the same cores, and PyTorch is told to use
that many threads, so no framework gets more of the machine than another.
"""

import dataclasses
import functools
import importlib.metadata
import itertools
import multiprocessing
import multiprocessing.pool
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from fmjax.config import base_config
from fmjax.core import steps
from fmjax.core.losses import cross_entropy
from fmjax.core.models import create_model
from fmjax.core.optim import create_optimizer
from fmjax.core.state import create_train_state
from fmjax.errors import UserError
from fmjax.parallel.data_parallel import PARALLEL_MODES, make_data_parallel
from fmjax.run.runtime import use_freed_memory_again

# The goals; the report shows them, nothing enforces them.
TARGETS = {
    "step_vs_torch_eager": 2.0,  # fmjax images/s over PyTorch eager's, at least
    "step_vs_torch_compile": 1.3,  # over torch.compile's, at least
    "step_fraction_of_roofline": 0.5,  # bound time over measured time, at least
    "pipeline_vs_pil_pool": 2.0,  # fmjax pipeline images/s over the PIL pool's, at least
}
LOOP_STEPS = 8  # steps per compiled call in the "loop" variants
PIL_POOL_WORKERS = 2  # the seed's loader as DataLoader(num_workers=2) would run it
# JPEG sizes a photo folder typically holds, (width, height) in pixels.
JPEG_SIZES = ((320, 240), (500, 375), (640, 480), (256, 256))


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls.

    Attributes:
      median_s: the median call, the number every rate is computed from.
      min_s, max_s: the fastest and slowest call, the spread around it.
      repeats: how many calls were timed.
    """

    median_s: float
    min_s: float
    max_s: float
    repeats: int

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _timing(seconds: Sequence[float]) -> Timing:
    return Timing(statistics.median(seconds), min(seconds), max(seconds), len(seconds))


def time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> Timing:
    """Times `call`, which must return only once its work is done.

    Args:
      call: a function of no arguments; its result is ignored.
      warmup: untimed calls first (compilation, caches, thread pools).
      repeats: timed calls, at least 1.

    Returns:
      The Timing of the timed calls.
    """
    return time_interleaved({"call": call}, warmup, repeats)["call"]


def time_interleaved(
    calls: dict[str, Callable[[], Any]], warmup: int, repeats: int
) -> dict[str, Timing]:
    """Times several calls in turn, one of each per round, `repeats` rounds.

    Taking turns spreads any slow spell of the machine (another process
    waking up) over every contender instead of on whichever ran then.

    Args:
      calls: name -> a function of no arguments that returns once its work is done.
      warmup: untimed calls of each first.
      repeats: rounds, at least 1.

    Returns:
      name -> the Timing of its calls.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return {name: _timing(times) for name, times in seconds.items()}


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

    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
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


# ---------------------------------------------------------------- roofline


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


def xla_cost(compiled: Any) -> dict[str, float]:
    """Flops and bytes accessed from a compiled computation's cost analysis.

    Args:
      compiled: what `jax.jit(f).lower(...).compile()` returns. Its
        `cost_analysis()` is a dict or, in some JAX versions, a list of one
        dict per computation; the list's entries are added up.

    Returns:
      {"flops", "bytes_accessed", "temp_bytes"}: temp_bytes is the scratch
      memory XLA allocates for every call (0 if the backend does not say).
    """
    analysis = compiled.cost_analysis()
    parts = analysis if isinstance(analysis, (list, tuple)) else [analysis]
    memory = compiled.memory_analysis()
    return {
        "flops": float(sum(part.get("flops", 0.0) for part in parts)),
        "bytes_accessed": float(sum(part.get("bytes accessed", 0.0) for part in parts)),
        "temp_bytes": float(getattr(memory, "temp_size_in_bytes", 0) or 0),
    }


def roofline(
    flops: float, bytes_accessed: float, peak_gflops: float, bandwidth_gbs: float, measured_s: float
) -> dict[str, Any]:
    """The fastest a computation could run on this machine, and how close it comes.

    Args:
      flops, bytes_accessed: the computation's work, from XLA's cost analysis.
      peak_gflops: the machine's matmul rate.
      bandwidth_gbs: the machine's memory bandwidth.
      measured_s: the computation's measured median time.

    Returns:
      {"compute_s", "memory_s", "bound_s", "bound_by", "fraction_of_bound"}:
      bound_s is the larger of compute_s and memory_s, and fraction_of_bound
      is bound_s / measured_s (1.0 would be the roofline itself).
    """
    compute_s = flops / (peak_gflops * 1e9)
    memory_s = bytes_accessed / (bandwidth_gbs * 1e9)
    bound_s = max(compute_s, memory_s)
    return {
        "compute_s": compute_s,
        "memory_s": memory_s,
        "bound_s": bound_s,
        "bound_by": "compute" if compute_s >= memory_s else "memory",
        "fraction_of_bound": bound_s / measured_s,
    }


# ---------------------------------------------------------------- train step


def _random_batch(batch_size: int, image_size: int, num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((batch_size, image_size, image_size, 3), dtype=np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
    }


def _seed_state(image_size: int, hidden: int, num_classes: int):
    """The seed's model and Adam(lr=1e-3) as fmjax's base config builds them."""
    config = base_config()
    config.model.hidden = hidden
    model = create_model(config.model, num_classes)
    return create_train_state(
        jax.random.key(config.seed),
        model,
        create_optimizer(config),
        jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32),
    )


def fmjax_step_cost(image_size: int, batch_size: int, hidden: int, num_classes: int) -> dict[str, float]:
    """XLA's cost analysis of fmjax's train step on one device, as the jit form compiles it."""
    state = _seed_state(image_size, hidden, num_classes)
    batch = _random_batch(batch_size, image_size, num_classes)
    step = jax.jit(functools.partial(steps.train_step, loss_fn=cross_entropy), donate_argnums=0)
    return xla_cost(step.lower(state, batch).compile())


def fmjax_step(
    mode: str,
    image_size: int,
    batch_size: int,
    hidden: int,
    num_classes: int,
    steps_per_call: int = 1,
) -> tuple[Callable[[], None], dict[str, Any]]:
    """fmjax's train step in data-parallel form `mode` over all local devices, ready to time.

    Args:
      mode: "pmap" or "jit" (see fmjax.parallel.data_parallel).
      steps_per_call: 1 dispatches one step from the host per call; more run
        that many steps in one compiled loop over data on the devices, as
        train.py does when the data fit there.
      image_size: square input side in pixels.
      batch_size: global batch; must divide by the device count.
      hidden: fc1's width (the seed's is 1000).
      num_classes: fc2's width.

    Returns:
      (call, info): call runs the steps and waits for them (the first call
      compiles); info is {"framework", "variant", "devices", "steps_per_call"}.
    """
    # With fmjax's NaN/Inf flag, as train.py ships it (config.halt_on_nonfinite).
    parallel = make_data_parallel(mode, cross_entropy)
    if batch_size % parallel.num_devices:
        raise UserError(
            f"batch size {batch_size} does not divide by the {parallel.num_devices} "
            "devices; make it a multiple of the device count"
        )
    state = parallel.put_state(_seed_state(image_size, hidden, num_classes))
    batch = parallel.put_batch(_random_batch(batch_size, image_size, num_classes))
    # The step donates its input state, so each call must take the latest one.
    holder = [state]

    def call():
        holder[0], _ = parallel.train_step(holder[0], batch)
        jax.block_until_ready(holder[0])

    if steps_per_call == 1:
        return call, {"framework": "fmjax", "variant": mode, "devices": parallel.num_devices, "steps_per_call": 1}

    # As train.py runs data that fit on the devices: the images stay there and
    # steps_per_call steps run in one compiled loop, each gathering its batch.
    images = _random_batch(batch_size * steps_per_call, image_size, num_classes)
    data = parallel.put_data(images)
    indices = parallel.put_indices(
        np.arange(batch_size * steps_per_call, dtype=np.int32).reshape(steps_per_call, batch_size)
    )

    def loop_call():
        holder[0], metrics = parallel.train_loop(holder[0], data, indices, 0, 0, steps_per_call)
        jax.block_until_ready(metrics)

    return loop_call, {
        "framework": "fmjax",
        "variant": f"{mode} loop",
        "devices": parallel.num_devices,
        "steps_per_call": steps_per_call,
    }


def torch_seed_net(image_size: int, hidden: int, num_classes: int):
    """The seed's Net in PyTorch with its fc1 size fixed: NCHW in, logits out."""
    from torch import nn

    side = image_size - 5 + 1  # a 5x5 VALID convolution
    return nn.Sequential(
        nn.Conv2d(3, 32, 5),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * side * side, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def torch_step(
    compiled: bool, image_size: int, batch_size: int, hidden: int, num_classes: int
) -> tuple[Callable[[], None] | None, dict[str, Any]]:
    """The seed's PyTorch train step (zero_grad, forward, CrossEntropyLoss, backward, Adam), ready to time.

    Args:
      compiled: run the step under torch.compile instead of eagerly; the
        compilation happens here, in a first call.
      image_size, batch_size, hidden, num_classes: as for fmjax_step.

    Returns:
      (call, info): info is {"framework", "variant"} and, when compiled,
      "compile_s"; when torch.compile fails, call is None and info's "error"
      says why.
    """
    import torch

    info: dict[str, Any] = {"framework": "torch", "variant": "compile" if compiled else "eager"}
    torch.manual_seed(0)
    net = torch_seed_net(image_size, hidden, num_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    batch = _random_batch(batch_size, image_size, num_classes)
    images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(batch["label"].astype(np.int64))

    def step():
        optimizer.zero_grad()
        criterion(net(images), labels).backward()
        optimizer.step()

    if not compiled:
        return step, info
    compiled_step = torch.compile(step)
    start = time.perf_counter()
    try:
        compiled_step()
    except Exception as error:  # whatever stops the compiler is a result to report
        reason = str(error).splitlines()[0] if str(error) else ""
        return None, {**info, "error": f"{type(error).__name__}: {reason}"}
    return compiled_step, {**info, "compile_s": time.perf_counter() - start}


# ---------------------------------------------------------------- input pipeline


def write_jpeg_folder(root: str, num_train: int, num_test: int, num_classes: int, seed: int = 0) -> None:
    """Writes root/{train,test}/class_<k>/<i>.jpg, photo-sized and smooth like photos.

    Sizes cycle through JPEG_SIZES; each image is coarse noise scaled up, so it
    compresses and decodes like a photograph rather than like white noise.
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("test", num_test)):
        for i in range(count):
            class_dir = Path(root, split, f"class_{i % num_classes}")
            class_dir.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize(JPEG_SIZES[i % len(JPEG_SIZES)], Image.BILINEAR)
            image.save(class_dir / f"{i}.jpg", quality=90)


def fmjax_pipeline_epoch(
    root: str, image_size: int, batch_size: int
) -> tuple[Callable[[], None], int]:
    """One epoch of fmjax's streamed pipeline (data.cache="none") over an image folder's train split, ready to time.

    Returns:
      (call, images): call reads the next epoch's batches; images is how
      many one epoch holds.
    """
    from fmjax.data import load_dataset

    config = base_config()
    config.data.source = "image_folder"
    config.data.root = root
    config.image_size = image_size
    dataset = load_dataset(config)
    epochs = itertools.count()

    def call():
        for _ in dataset.train_batches(next(epochs), batch_size):
            pass

    return call, dataset.steps_per_epoch(batch_size) * batch_size


def pil_batch(paths: Sequence[str], image_size: int) -> np.ndarray:
    """What ImageFolder with Resize and ToTensor gives for `paths`, stacked: float32 [B, 3, H, W] in [0, 1]."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        images.append(np.asarray(resized, np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(images)


def pil_pool_epoch(
    root: str, image_size: int, batch_size: int, pool: multiprocessing.pool.Pool
) -> tuple[Callable[[], None], int]:
    """One epoch of the seed's loader, PIL in a pool of worker processes, over root/train.

    As DataLoader(num_workers=2, persistent_workers=True) does, each worker
    builds whole shuffled batches, which come back in order.

    Returns:
      (call, images), as fmjax_pipeline_epoch.
    """
    paths = sorted(str(path) for path in Path(root, "train").glob("*/*.jpg"))
    images = len(paths) // batch_size * batch_size
    rng = np.random.default_rng(0)
    load = functools.partial(pil_batch, image_size=image_size)

    def call():
        order = rng.permutation(len(paths))[:images].reshape(-1, batch_size)
        for _ in pool.imap(load, [[paths[i] for i in chunk] for chunk in order]):
            pass

    return call, images


# ---------------------------------------------------------------- the whole run


def step_ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """fmjax images/s over PyTorch's, for every fmjax mode and PyTorch variant that ran.

    Args:
      results: step results with an "image_size" each, as run_benchmark makes.

    Returns:
      One {"image_size", "fmjax", "torch", "ratio"} per pair of one size.
    """
    ratios = []
    for mine in results:
        if mine["framework"] != "fmjax":
            continue
        for theirs in results:
            if (
                theirs["framework"] == "torch"
                and theirs["image_size"] == mine["image_size"]
                and "images_per_s" in theirs
            ):
                ratios.append(
                    {
                        "image_size": mine["image_size"],
                        "fmjax": mine["variant"],
                        "torch": theirs["variant"],
                        "ratio": mine["images_per_s"] / theirs["images_per_s"],
                    }
                )
    return ratios


def step_results(
    image_size: int,
    batch_size: int,
    hidden: int,
    num_classes: int,
    warmup: int,
    repeats: int,
    compile_torch: bool,
) -> list[dict[str, Any]]:
    """fmjax's step in both parallel forms and PyTorch's, timed in turns at one input size.

    Returns:
      One dict per contender: its info (see fmjax_step and torch_step) with
      "image_size", "batch_size" and, unless it failed, "timing" and
      "images_per_s".
    """
    shape = dict(image_size=image_size, batch_size=batch_size, hidden=hidden, num_classes=num_classes)
    prepared = [
        fmjax_step(mode, **shape, steps_per_call=steps_per_call)
        for steps_per_call in (1, LOOP_STEPS)
        for mode in PARALLEL_MODES
    ]
    prepared.append(torch_step(False, **shape))
    if compile_torch:
        prepared.append(torch_step(True, **shape))
    runnable = {i: call for i, (call, _) in enumerate(prepared) if call is not None}
    # Every contender compiles in its first call, so at least one call warms up.
    timings = time_interleaved(runnable, max(warmup, 1), repeats)
    results = []
    for i, (_, info) in enumerate(prepared):
        result = {"image_size": image_size, "batch_size": batch_size, **info}
        if i in timings:
            result["timing"] = timings[i].as_dict()
            result["images_per_s"] = info.get("steps_per_call", 1) * batch_size / timings[i].median_s
        results.append(result)
    return results


def pipeline_results(
    root: str, image_size: int, batch_size: int, warmup: int, repeats: int
) -> list[dict[str, Any]]:
    """fmjax's streamed pipeline and the PIL pool, whole epochs over root/train timed in turns.

    Returns:
      [fmjax's, the PIL pool's], each {"loader", "images", "timing", "images_per_s"}.
    """
    # The pool's workers come from a clean server process: forking this one,
    # which runs XLA's threads, could deadlock them.
    context = multiprocessing.get_context("forkserver")
    # The server imports this module once; each worker then starts without importing it.
    context.set_forkserver_preload([__name__])
    with context.Pool(PIL_POOL_WORKERS) as pool:
        loaders = {
            "fmjax streamed": fmjax_pipeline_epoch(root, image_size, batch_size),
            f"PIL pool ({PIL_POOL_WORKERS} processes)": pil_pool_epoch(root, image_size, batch_size, pool),
        }
        timings = time_interleaved({name: call for name, (call, _) in loaders.items()}, warmup, repeats)
    return [
        {
            "loader": name,
            "images": images,
            "timing": timings[name].as_dict(),
            "images_per_s": images / timings[name].median_s,
        }
        for name, (_, images) in loaders.items()
    ]


def run_benchmark(
    sizes: Sequence[int],
    batch_size: int,
    warmup: int,
    repeats: int,
    jpeg_dir: str,
    *,
    hidden: int = 1000,
    num_classes: int = 10,
    pipeline_image_size: int = 224,
    num_jpegs: int = 384,
    matmul_size: int = 2048,
    bandwidth_floats: int = 2**26,
    compile_torch: bool = True,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Every measurement of this module, on the cores the process runs on.

    Args:
      sizes: input sides in pixels to time the train step at.
      batch_size: global batch of the train step and the pipelines.
      warmup, repeats: see time_interleaved; pipelines warm up 1 epoch at most.
      jpeg_dir: an empty folder to write the pipelines' JPEGs into.
      hidden, num_classes: the model (the seed's: 1000 and 10).
      pipeline_image_size: the side the pipelines resize to (the seed's 224).
      num_jpegs: training JPEGs written; a tenth as many test ones.
      matmul_size, bandwidth_floats: the sizes of the roofline measurements.
      compile_torch: also time torch.compile (slow to compile).
      log: called with a line as each measurement finishes.

    Returns:
      A JSON-ready dict: "machine", "roofline_machine", "steps", "ratios",
      "rooflines", "pipelines", "pipeline_ratio" and "targets".
    """
    for size in sizes:
        if size < 5:
            raise UserError(f"image size {size} is smaller than the 5x5 convolution; use 5 or more")
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise UserError("batch size and repeats must be at least 1, warm-up at least 0; raise them")
    # As train.py does: freed step buffers are reused rather than returned to
    # the system (fmjax.run.runtime); it applies to PyTorch's steps as well.
    use_freed_memory_again()
    matmul = matmul_gflops(matmul_size, warmup, repeats)
    bandwidth = memory_bandwidth_gbs(bandwidth_floats, warmup, repeats)
    log(f"machine: {matmul['gflops']:.1f} GFLOP/s matmul, {bandwidth['gbs']:.1f} GB/s memory")

    steps_timed, rooflines = [], []
    for size in sizes:
        cost = fmjax_step_cost(size, batch_size, hidden, num_classes)
        for result in step_results(size, batch_size, hidden, num_classes, warmup, repeats, compile_torch):
            steps_timed.append(result)
            log(f"step {size}x{size} {result['framework']} {result['variant']}: "
                + result.get("error", f"{result.get('images_per_s', 0):.1f} images/s"))
            if result["framework"] == "fmjax":
                rooflines.append(
                    {
                        "image_size": size,
                        "variant": result["variant"],
                        **cost,
                        **roofline(
                            cost["flops"],
                            cost["bytes_accessed"],
                            matmul["gflops"],
                            bandwidth["gbs"],
                            result["timing"]["median_s"] / result["steps_per_call"],
                        ),
                    }
                )

    write_jpeg_folder(jpeg_dir, num_jpegs, max(num_jpegs // 10, num_classes), num_classes)
    pipelines = pipeline_results(jpeg_dir, pipeline_image_size, batch_size, min(warmup, 1), repeats)
    for pipeline in pipelines:
        log(f"pipeline {pipeline['loader']}: {pipeline['images_per_s']:.1f} images/s")
    return {
        "machine": machine_info(),
        "roofline_machine": {"matmul": matmul, "bandwidth": bandwidth},
        "steps": steps_timed,
        "ratios": step_ratios(steps_timed),
        "rooflines": rooflines,
        "pipelines": pipelines,
        "pipeline_ratio": pipelines[0]["images_per_s"] / pipelines[1]["images_per_s"],
        "targets": TARGETS,
    }


def _met(value: float, target: float) -> str:
    return "met" if value >= target else "missed"


def markdown_report(results: dict[str, Any]) -> str:
    """The results of run_benchmark as markdown tables, with the targets met or missed."""
    machine = results["machine"]
    roof = results["roofline_machine"]
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['cores_used']} of "
        f"{machine['logical_cores']} cores used, {machine['jax_devices']} JAX device(s); "
        f"jax {machine['jax']}, torch {machine['torch']}, tensorflow {machine['tensorflow']}.",
        f"Matmul {roof['matmul']['gflops']:.1f} GFLOP/s ({roof['matmul']['size']}^2 float32), "
        f"memory {roof['bandwidth']['gbs']:.1f} GB/s (read + write).",
        "",
        "| step | size | batch | median ms | min-max ms | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for step in results["steps"]:
        name = f"{step['framework']} {step['variant']}"
        if "error" in step:
            lines.append(f"| {name} | {step['image_size']} | {step['batch_size']} | failed: {step['error']} | | |")
            continue
        timing = step["timing"]
        lines.append(
            f"| {name} | {step['image_size']} | {step['batch_size']} | {timing['median_s'] * 1e3:.1f} "
            f"| {timing['min_s'] * 1e3:.1f}-{timing['max_s'] * 1e3:.1f} | {step['images_per_s']:.1f} |"
        )
    targets = results["targets"]
    lines += ["", "| size | fmjax / torch | ratio | target |", "|---|---|---|---|"]
    for ratio in results["ratios"]:
        target = targets[f"step_vs_torch_{ratio['torch']}"]
        lines.append(
            f"| {ratio['image_size']} | {ratio['fmjax']} / {ratio['torch']} | {ratio['ratio']:.2f}x "
            f"| >= {target:.1f}x {_met(ratio['ratio'], target)} |"
        )
    lines += [
        "",
        "| size | fmjax | GFLOP | GB accessed | temp MB | compute ms | memory ms | bound ms | bound / measured | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    target = targets["step_fraction_of_roofline"]
    for row in results["rooflines"]:
        lines.append(
            f"| {row['image_size']} | {row['variant']} | {row['flops'] / 1e9:.2f} "
            f"| {row['bytes_accessed'] / 1e9:.2f} | {row['temp_bytes'] / 1e6:.0f} "
            f"| {row['compute_s'] * 1e3:.1f} | {row['memory_s'] * 1e3:.1f} "
            f"| {row['bound_s'] * 1e3:.1f} ({row['bound_by']}) | {row['fraction_of_bound']:.2f} "
            f"| >= {target:.2f} {_met(row['fraction_of_bound'], target)} |"
        )
    lines += ["", "| input pipeline (224x224) | images | median s | images/s |", "|---|---|---|---|"]
    for pipeline in results["pipelines"]:
        lines.append(
            f"| {pipeline['loader']} | {pipeline['images']} | {pipeline['timing']['median_s']:.2f} "
            f"| {pipeline['images_per_s']:.1f} |"
        )
    ratio = results["pipeline_ratio"]
    target = targets["pipeline_vs_pil_pool"]
    lines.append(f"| ratio fmjax / PIL | | | {ratio:.2f}x (>= {target:.1f}x {_met(ratio, target)}) |")
    return "\n".join(lines) + "\n"
