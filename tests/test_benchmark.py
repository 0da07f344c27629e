"""scripts/benchmarks on tiny sizes: the structure and sanity of its results, never its speed."""

import math

import numpy as np
import pytest

from benchmarks import machine, pipeline, roofline, step, timing

SIZE, BATCH, HIDDEN, CLASSES = 12, 8, 16, 10  # BATCH divides the 8 test devices


def _positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_timing_summarises_every_call():
    calls = []
    timings = timing.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up first, then rounds in turn
    for measured in timings.values():
        assert measured.repeats == 3
        assert 0 <= measured.min_s <= measured.median_s <= measured.max_s


def test_roofline_bound_is_the_slower_of_compute_and_memory():
    row = roofline.roofline(4e9, 1e9, peak_gflops=100.0, bandwidth_gbs=10.0, measured_s=0.2)
    assert row["compute_s"] == pytest.approx(0.04)
    assert row["memory_s"] == pytest.approx(0.1)
    assert row["bound_s"] == pytest.approx(0.1) and row["bound_by"] == "memory"
    assert row["fraction_of_bound"] == pytest.approx(0.5)


def test_train_steps_of_both_frameworks_and_their_ratios():
    results = step.step_results(SIZE, BATCH, HIDDEN, CLASSES, warmup=1, repeats=2, compile_torch=False)
    assert [(r["framework"], r["variant"]) for r in results] == [
        ("fmjax", "pmap"),
        ("fmjax", "jit"),
        ("fmjax", "pmap loop"),
        ("fmjax", "jit loop"),
        ("torch", "eager"),
    ]
    for result in results:
        assert result["image_size"] == SIZE and result["batch_size"] == BATCH
        assert _positive_finite(result["images_per_s"])
        steps = result.get("steps_per_call", 1)
        assert steps == (step.LOOP_STEPS if "loop" in result["variant"] else 1)
        assert result["images_per_s"] == pytest.approx(steps * BATCH / result["timing"]["median_s"])
    assert results[0]["devices"] == 8

    ratios = step.step_ratios(results)
    assert len(ratios) == 4
    torch_rate = results[4]["images_per_s"]
    for ratio, mine in zip(ratios, results[:4]):
        assert (ratio["fmjax"], ratio["torch"]) == (mine["variant"], "eager")
        assert ratio["ratio"] == pytest.approx(mine["images_per_s"] / torch_rate)


def test_step_roofline_from_xla_cost_and_machine_rates():
    cost = roofline.fmjax_step_cost(SIZE, BATCH, HIDDEN, CLASSES)
    # fc1's forward and backward products alone: 3 matmuls of 2 * B * in * out flops.
    fc1_inputs = 32 * (SIZE - 4) ** 2
    assert cost["flops"] >= 3 * 2 * BATCH * fc1_inputs * HIDDEN
    # Adam reads and writes at least the params and both moments.
    assert cost["bytes_accessed"] >= 6 * 4 * fc1_inputs * HIDDEN
    matmul = machine.matmul_gflops(64, warmup=1, repeats=2)
    bandwidth = machine.memory_bandwidth_gbs(2**16, warmup=1, repeats=2)
    assert _positive_finite(matmul["gflops"]) and _positive_finite(bandwidth["gbs"])
    row = roofline.roofline(cost["flops"], cost["bytes_accessed"], matmul["gflops"], bandwidth["gbs"], 0.01)
    assert row["bound_s"] == max(
        cost["flops"] / (matmul["gflops"] * 1e9), cost["bytes_accessed"] / (bandwidth["gbs"] * 1e9)
    )
    assert row["fraction_of_bound"] == pytest.approx(row["bound_s"] / 0.01)


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
    for result in results:
        assert result["images"] == 16
        assert _positive_finite(result["images_per_s"])


def test_checkpoint_cost_arithmetic_and_report():
    from benchmarks.checkpoints import CheckpointCost, format_report

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
