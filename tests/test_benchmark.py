"""scripts/benchmarks on tiny sizes: what they measure and compute, never the machine's speed."""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from benchmarks import machine, pipeline, roofline, step, suite, timing
from benchmarks.checkpoints import CheckpointCost, format_report

from fmjax.tools.dry_run import xla_cost

SIZE, BATCH, HIDDEN, CLASSES = 12, 8, 16, 10  # BATCH divides the 8 test devices


def _positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_calls_warm_up_then_take_turns():
    calls = []
    timings = timing.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert [measured.repeats for measured in timings.values()] == [3, 3]


def test_a_sleep_is_timed_as_long_as_it_sleeps():
    measured = timing.time_calls(lambda: time.sleep(0.05), warmup=0, repeats=3)
    assert measured.min_s >= 0.05
    assert measured.max_s < 0.05 + 0.05  # a loaded machine wakes a sleeper late, not 50 ms late


def test_roofline_of_a_known_matmul():
    a, b = jnp.zeros((64, 32), jnp.float32), jnp.zeros((32, 16), jnp.float32)
    cost = xla_cost(jax.jit(jnp.matmul).lower(a, b).compile())
    flops = 2 * 64 * 32 * 16  # a multiply and an add per term
    bytes_accessed = 4 * (64 * 32 + 32 * 16 + 64 * 16)  # both inputs read, the output written
    assert cost == {"flops": flops, "bytes_accessed": bytes_accessed}
    # At 1 GFLOP/s and 0.1 GB/s: 65.536 us of compute, 143.36 us of memory traffic.
    row = roofline.roofline(flops, bytes_accessed, peak_gflops=1.0, bandwidth_gbs=0.1, measured_s=286.72e-6)
    assert row["compute_s"] == pytest.approx(65.536e-6)
    assert row["memory_s"] == pytest.approx(143.36e-6)
    assert row["bound_s"] == pytest.approx(143.36e-6) and row["bound_by"] == "memory"
    assert row["fraction_of_bound"] == pytest.approx(0.5)


def test_step_cost_covers_fc1s_products_and_adams_traffic():
    cost = roofline.fmjax_step_cost(SIZE, BATCH, HIDDEN, CLASSES)
    # fc1's forward and backward products alone: 3 matmuls of 2 * B * in * out flops.
    fc1_inputs = 32 * (SIZE - 4) ** 2
    assert cost["flops"] >= 3 * 2 * BATCH * fc1_inputs * HIDDEN
    # Adam reads and writes at least the params and both moments.
    assert cost["bytes_accessed"] >= 6 * 4 * fc1_inputs * HIDDEN


def test_a_loops_roofline_is_per_step():
    cost = {"flops": 1e9, "bytes_accessed": 1e9, "temp_bytes": 0.0}
    results = [
        {"framework": "fmjax", "variant": "jit loop", "image_size": 32, "steps_per_call": 8, "timing": {"median_s": 0.8}},
        {"framework": "torch", "variant": "eager", "image_size": 32, "timing": {"median_s": 0.1}},
    ]
    [row] = roofline.step_rooflines(cost, results, peak_gflops=100.0, bandwidth_gbs=10.0)
    # 1 GB at 10 GB/s is 0.1 s, the same as each of the loop's 8 steps in 0.8 s.
    assert (row["variant"], row["bound_by"]) == ("jit loop", "memory")
    assert row["fraction_of_bound"] == pytest.approx(1.0)


def test_train_steps_of_both_frameworks_run():
    results = step.step_results(SIZE, BATCH, HIDDEN, CLASSES, warmup=1, repeats=1, compile_torch=False)
    assert [(r["framework"], r["variant"], r.get("steps_per_call")) for r in results] == [
        ("fmjax", "pmap", 1),
        ("fmjax", "jit", 1),
        ("fmjax", "pmap loop", step.LOOP_STEPS),
        ("fmjax", "jit loop", step.LOOP_STEPS),
        ("torch", "eager", None),
    ]
    assert {r["devices"] for r in results[:4]} == {8}
    assert all(_positive_finite(r["images_per_s"]) for r in results)


def test_ratios_pair_fmjax_with_each_torch_variant_that_ran_at_its_size():
    results = [
        {"framework": "fmjax", "variant": "jit", "image_size": 32, "images_per_s": 200.0},
        {"framework": "fmjax", "variant": "jit", "image_size": 64, "images_per_s": 30.0},
        {"framework": "torch", "variant": "eager", "image_size": 32, "images_per_s": 100.0},
        {"framework": "torch", "variant": "compile", "image_size": 32, "error": "failed"},
        {"framework": "torch", "variant": "eager", "image_size": 64, "images_per_s": 20.0},
    ]
    assert [(r["image_size"], r["fmjax"], r["torch"], r["ratio"]) for r in step.step_ratios(results)] == [
        (32, "jit", "eager", 2.0),
        (64, "jit", "eager", 1.5),
    ]


def test_cpu_model_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
    assert machine.cpu_model(str(cpuinfo)) == "Test CPU 9000"
    assert machine.cpu_model(str(tmp_path / "missing"))  # off Linux: platform's name, or "unknown"


def test_machine_rates_are_measured():
    assert _positive_finite(machine.matmul_gflops(64, warmup=1, repeats=2)["gflops"])
    assert _positive_finite(machine.memory_bandwidth_gbs(2**16, warmup=1, repeats=2)["gbs"])


def test_the_roofline_takes_the_faster_of_the_machine_measured_before_and_after():
    before = ({"gflops": 130.0, "size": 8}, {"gbs": 90.0})
    after = ({"gflops": 197.0, "size": 8}, {"gbs": 50.0})
    machine = suite.roofline_machine(before, after)
    assert machine["matmul"]["gflops"] == 197.0 and machine["bandwidth"]["gbs"] == 90.0
    assert machine["measured_gflops"] == [130.0, 197.0] and machine["measured_gbs"] == [90.0, 50.0]


def test_pil_batch_is_what_to_tensor_gives(tmp_path):
    pipeline.write_jpeg_folder(str(tmp_path), num_train=2, num_test=1, num_classes=2)
    paths = sorted(str(p) for p in tmp_path.glob("train/*/*.jpg"))
    batch = pipeline.pil_batch(paths, 24)
    assert batch.shape == (2, 3, 24, 24) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0


def test_pipelines_read_whole_epochs(tmp_path):
    pipeline.write_jpeg_folder(str(tmp_path), num_train=16, num_test=4, num_classes=4)
    results = pipeline.pipeline_results(str(tmp_path), image_size=24, batch_size=4, warmup=0, repeats=1)
    assert [r["loader"] for r in results] == ["fmjax streamed", "PIL pool (2 processes)"]
    assert [r["images"] for r in results] == [16, 16]


def test_checkpoint_cost_arithmetic_and_report():
    cost = CheckpointCost(
        every_steps=10, step_ms={"none": 50.0, "sync": 60.0, "async": 51.0}, samples={"none": 6, "sync": 6, "async": 6}
    )
    assert cost.per_checkpoint_ms("sync") == 100.0 and cost.per_checkpoint_ms("async") == 10.0
    assert cost.overhead("sync") == pytest.approx(0.2)
    assert format_report(cost, "a test machine").splitlines() == [
        "Checkpoint every 10 steps; a test machine",
        "",
        "| checkpoints | ms per step | added per step | added per checkpoint |",
        "|---|---|---|---|",
        "| none | 50.0 | | |",
        "| sync | 60.0 | +20.0% | +100 ms |",
        "| async | 51.0 | +2.0% | +10 ms |",
        "",
        "(medians over 6 epochs per variant)",
    ]
