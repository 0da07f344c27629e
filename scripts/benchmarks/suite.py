"""Every measurement of the benchmark against the seed's PyTorch program, in one run."""

from typing import Any, Callable, Sequence

from benchmarks.machine import machine_info, matmul_gflops, memory_bandwidth_gbs
from benchmarks.pipeline import pipeline_results, write_jpeg_folder
from benchmarks.report import TARGETS
from benchmarks.roofline import fmjax_step_cost, step_rooflines
from benchmarks.step import step_ratios, step_results
from fmjax.errors import UserError
from fmjax.run.runtime import use_freed_memory_again


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
    """Every measurement of this package, on the cores the process runs on.

    Args:
      sizes: input sides in pixels to time the train step at.
      batch_size: global batch of the train step and the pipelines.
      warmup, repeats: see benchmarks.timing.time_interleaved; pipelines warm
        up 1 epoch at most.
      jpeg_dir: an empty folder to write the pipelines' JPEGs into.
      hidden, num_classes: the model (the seed's: 1000 and 10).
      pipeline_image_size: the side the pipelines resize to (the seed's 224).
      num_jpegs: training JPEGs written; a tenth as many test ones.
      matmul_size, bandwidth_floats: the sizes of the roofline measurements.
      compile_torch: also time torch.compile (slow to compile).
      log: called with a line as each measurement finishes.

    Returns:
      A JSON-ready dict: "machine", "roofline_machine" (the faster of the
      matmul and bandwidth measured before and after the steps, which the
      rooflines use, and both figures), "steps", "ratios",
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

    def measure_machine(when: str) -> tuple[dict, dict]:
        matmul = matmul_gflops(matmul_size, warmup, repeats)
        bandwidth = memory_bandwidth_gbs(bandwidth_floats, warmup, repeats)
        log(f"machine, {when}: {matmul['gflops']:.1f} GFLOP/s matmul, {bandwidth['gbs']:.1f} GB/s memory")
        return matmul, bandwidth

    machine_before = measure_machine("before the steps")

    steps_timed, costs = [], {}
    for size in sizes:
        costs[size] = fmjax_step_cost(size, batch_size, hidden, num_classes)
        results = step_results(size, batch_size, hidden, num_classes, warmup, repeats, compile_torch)
        for result in results:
            log(f"step {size}x{size} {result['framework']} {result['variant']}: "
                + result.get("error", f"{result.get('images_per_s', 0):.1f} images/s"))
        steps_timed += results
    machine = roofline_machine(machine_before, measure_machine("after the steps"))
    rooflines = []
    for size in sizes:
        results = [r for r in steps_timed if r["image_size"] == size]
        rooflines += step_rooflines(costs[size], results, machine["matmul"]["gflops"], machine["bandwidth"]["gbs"])

    write_jpeg_folder(jpeg_dir, num_jpegs, max(num_jpegs // 10, num_classes), num_classes)
    pipelines = pipeline_results(jpeg_dir, pipeline_image_size, batch_size, min(warmup, 1), repeats)
    for pipeline in pipelines:
        log(f"pipeline {pipeline['loader']}: {pipeline['images_per_s']:.1f} images/s")
    return {
        "machine": machine_info(),
        "roofline_machine": machine,
        "steps": steps_timed,
        "ratios": step_ratios(steps_timed),
        "rooflines": rooflines,
        "pipelines": pipelines,
        "pipeline_ratio": pipelines[0]["images_per_s"] / pipelines[1]["images_per_s"],
        "targets": TARGETS,
    }


def roofline_machine(before: tuple[dict, dict], after: tuple[dict, dict]) -> dict[str, Any]:
    """The machine a roofline assumes: the faster matmul and bandwidth of two (matmul, bandwidth) measurements.

    A machine slowed for a while would lower the bound and flatter the steps
    (seen on a 2-core machine: 130 against 197 GFLOP/s in two runs an hour apart).
    """
    return {
        "matmul": max(before[0], after[0], key=lambda m: m["gflops"]),
        "bandwidth": max(before[1], after[1], key=lambda m: m["gbs"]),
        "measured_gflops": [before[0]["gflops"], after[0]["gflops"]],
        "measured_gbs": [before[1]["gbs"], after[1]["gbs"]],
    }
