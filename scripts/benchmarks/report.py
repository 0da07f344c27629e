"""The benchmark's results as markdown tables, with the issue's targets met or missed."""

from typing import Any

# The goals; the report shows them, nothing enforces them.
TARGETS = {
    "step_vs_torch_eager": 2.0,  # fmjax images/s over PyTorch eager's, at least
    "step_vs_torch_compile": 1.3,  # over torch.compile's, at least
    "step_fraction_of_roofline": 0.5,  # bound time over measured time, at least
    "pipeline_vs_pil_pool": 2.0,  # fmjax pipeline images/s over the PIL pool's, at least
}


def _met(value: float, target: float) -> str:
    return "met" if value >= target else "missed"


def _measured(roof: dict[str, Any]) -> str:
    """Both measurements the roofline's machine is the faster of, when the results hold them."""
    if "measured_gflops" not in roof:
        return ""
    gflops = " and ".join(f"{g:.1f}" for g in roof["measured_gflops"])
    gbs = " and ".join(f"{b:.1f}" for b in roof["measured_gbs"])
    return f"; the faster of {gflops} GFLOP/s and of {gbs} GB/s, before and after the steps"


def markdown_report(results: dict[str, Any]) -> str:
    """The results of benchmarks.suite.run_benchmark as markdown tables, with the targets met or missed."""
    machine = results["machine"]
    roof = results["roofline_machine"]
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['cores_used']} of "
        f"{machine['logical_cores']} cores used, {machine['jax_devices']} JAX device(s); "
        f"jax {machine['jax']}, torch {machine['torch']}, tensorflow {machine['tensorflow']}.",
        f"Matmul {roof['matmul']['gflops']:.1f} GFLOP/s ({roof['matmul']['size']}^2 float32), "
        f"memory {roof['bandwidth']['gbs']:.1f} GB/s (read + write){_measured(roof)}.",
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
