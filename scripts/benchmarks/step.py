"""The train step (forward, backward, Adam) of fmjax and of the seed's PyTorch program, ready to time."""

import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from benchmarks.timing import time_interleaved
from fmjax import build
from fmjax.config import base_config
from fmjax.core import losses
from fmjax.errors import UserError
from fmjax.parallel.data_parallel import PARALLEL_MODES, make_data_parallel

LOOP_STEPS = 8  # steps per compiled call in the "loop" variants


def random_batch(batch_size: int, image_size: int, num_classes: int) -> dict[str, np.ndarray]:
    """Images uniform in [0, 1) [B, H, W, 3] and labels [B], the same for every call."""
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((batch_size, image_size, image_size, 3), dtype=np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
    }


def seed_state(image_size: int, hidden: int, num_classes: int):
    """The seed's model and Adam(lr=1e-3) as fmjax's base config builds them."""
    config = base_config()
    config.model.hidden = hidden
    return build(config, num_classes, (image_size, image_size, 3)).init_state()


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
      image_size: square input side in pixels.
      batch_size: global batch; must divide by the device count.
      hidden: fc1's width (the seed's is 1000).
      num_classes: fc2's width.
      steps_per_call: 1 dispatches one step from the host per call; more run
        that many steps in one compiled loop over data on the devices, as
        train.py does when the data fit there.

    Returns:
      (call, info): call runs the steps and waits for them (the first call
      compiles); info is {"framework", "variant", "devices", "steps_per_call"}.
    """
    # With fmjax's NaN/Inf flag, as train.py ships it (config.halt_on_nonfinite).
    parallel = make_data_parallel(mode, losses.cross_entropy)
    if batch_size % parallel.num_devices:
        raise UserError(
            f"batch size {batch_size} does not divide by the {parallel.num_devices} "
            "devices; make it a multiple of the device count"
        )
    state = parallel.put_state(seed_state(image_size, hidden, num_classes))
    batch = parallel.put_batch(random_batch(batch_size, image_size, num_classes))
    # The step donates its input state, so each call must take the latest one.
    holder = [state]

    def call():
        holder[0], _ = parallel.train_step(holder[0], batch)
        jax.block_until_ready(holder[0])

    if steps_per_call == 1:
        return call, {"framework": "fmjax", "variant": mode, "devices": parallel.num_devices, "steps_per_call": 1}

    # As train.py runs data that fit on the devices: the images stay there and
    # steps_per_call steps run in one compiled loop, each gathering its batch.
    data = parallel.put_data(random_batch(batch_size * steps_per_call, image_size, num_classes))
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

    from benchmarks.torch_reference import Net

    info: dict[str, Any] = {"framework": "torch", "variant": "compile" if compiled else "eager"}
    torch.manual_seed(0)
    net = Net(num_classes, image_size=image_size, hidden=hidden)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    batch = random_batch(batch_size, image_size, num_classes)
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


def step_ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """fmjax images/s over PyTorch's, for every fmjax mode and PyTorch variant that ran.

    Args:
      results: step results with an "image_size" each, as step_results makes.

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
