"""Data on the devices and steps in compiled loops give what streamed, step-by-step training gives."""

import jax
import numpy as np
import pytest
from conftest import sigterm_from
from PIL import Image

import fmjax
from fmjax.config import base_config
from fmjax.data import cache_placement, load_dataset
from fmjax.data.split import split_pixels
from fmjax.errors import UserError
from fmjax.parallel.data_parallel import make_data_parallel
from fmjax.run import trainer


def tiny_config(**overrides):
    config = base_config()
    config.image_size = 8
    config.model.hidden = 32
    config.num_epochs = 2
    config.data.random_crop_padding = 1
    config.data.horizontal_flip = True
    config.update(overrides)
    return config


@pytest.fixture
def image_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for split, count in (("train", 12), ("test", 4)):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (int(rng.integers(9, 20)), 13, 3), np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("mode", ["pmap", "jit"])
def test_batches_gathered_on_the_devices_equal_the_streamed_ones(image_root, mode):
    config = tiny_config(parallel=mode)
    config.data.source = "image_folder"
    config.data.root = str(image_root)
    dataset = load_dataset(config)
    assert dataset.train_split.pixel_dtype == np.uint8
    parallel = make_data_parallel(mode, fmjax.core.losses.cross_entropy)
    data = parallel.put_data(split_pixels(dataset.train_split))
    rows = dataset.train_indices(1, 8)
    device_rows = parallel.put_indices(rows)
    streamed = list(dataset.train_batches(1, 8))
    prepare = jax.jit(dataset.prepare)
    for row, batch in enumerate(streamed):
        gathered = jax.device_get(
            jax.jit(lambda d, i: {"image": d["image"][i], "label": d["label"][i], "index": i})(
                jax.tree.map(lambda x: x[0] if mode == "pmap" else x, data),
                np.asarray(rows[row]),
            )
        )
        np.testing.assert_array_equal(gathered["image"], batch["image"])
        np.testing.assert_array_equal(gathered["label"], batch["label"])
        # Augmented the same way too: it is drawn from (seed, epoch, example).
        np.testing.assert_array_equal(
            jax.device_get(prepare(gathered, 1)["image"]), jax.device_get(prepare(batch, 1)["image"])
        )
    assert jax.tree.leaves(device_rows)[0].size == rows.size


def run(config, workdir):
    result = trainer.train_and_evaluate(config, str(workdir))
    return result, jax.device_get(fmjax.restore_params(str(workdir)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Two epochs with data on the device, steps in calls as long as the clock allows."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return run(tiny_config(host_check_seconds=1e9), workdir)


def test_compiled_loops_train_as_step_by_step_training_does(tmp_path, uninterrupted):
    result, params = uninterrupted
    streamed_config = tiny_config()
    streamed_config.data.cache = "none"
    streamed_result, streamed = run(streamed_config, tmp_path)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(streamed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert result["test_accuracy"] == pytest.approx(streamed_result["test_accuracy"], abs=1 / 450)
    assert result["train_loss"] == pytest.approx(streamed_result["train_loss"], rel=1e-4)


def test_a_run_stopped_inside_a_compiled_loop_resumes_bit_identical(tmp_path, monkeypatch, uninterrupted):
    _, params = uninterrupted
    # Calls of 1, 2, 4, 8, ... steps: the uninterrupted run ran steps 8 to 15
    # in one call; this one stops at 11, inside that call.
    stop_at = 11

    with monkeypatch.context() as patched:
        patched.setattr(trainer, "watch_for_sigterm", sigterm_from(stop_at))
        with pytest.raises(trainer.Preempted) as stopped:
            trainer.train_and_evaluate(
                tiny_config(host_check_seconds=1e9, checkpoint_every_steps=stop_at), str(tmp_path)
            )
    assert stopped.value.step == stop_at
    _, resumed = run(tiny_config(host_check_seconds=1e9), tmp_path)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_auto_placement_follows_the_budgets():
    config = tiny_config()
    dataset = load_dataset(config)
    size_mb = dataset.pixel_bytes() / 2**20
    assert dataset.pixel_bytes() == 1797 * 8 * 8 * 3 * 4  # digits keep float32 pixels
    config.data.device_cache_mb = size_mb * 1.01
    assert cache_placement(config, dataset) == "device"
    config.data.device_cache_mb = size_mb * 0.99
    assert cache_placement(config, dataset) == "host"
    config.data.host_cache_mb = size_mb * 0.99
    assert cache_placement(config, dataset) == "none"
    config.data.cache = "disk"
    with pytest.raises(UserError, match="config.data.cache is 'disk'"):
        cache_placement(config, dataset)


def test_a_log_that_is_not_a_terminal_gets_lines_not_carriage_returns(tmp_path, capsys):
    config = tiny_config(num_epochs=1, progress_line_seconds=0.0, host_check_seconds=1e9)
    trainer.train_and_evaluate(config, str(tmp_path))
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    within = [line for line in captured.out.splitlines() if " batch " in line]
    # Calls of 1, 2, 4, 8 and 6 steps: a line after each.
    assert [line.split("  ")[1] for line in within] == [
        "batch 1/21", "batch 3/21", "batch 7/21", "batch 15/21", "batch 21/21"
    ]
    assert within[0].startswith("epoch 1/1  batch 1/21  train loss so far ")
    assert sum(line.startswith("epoch 1/1  step 21") for line in captured.out.splitlines()) == 1


def test_profile_steps_trace_the_train_loop_into_tensorboards_folder(tmp_path, capsys):
    import glob
    import gzip
    import json

    trainer.train_and_evaluate(tiny_config(num_epochs=1, profile_steps=3), str(tmp_path))
    assert f"profile of the traced steps written to {tmp_path / 'tensorboard'}" in capsys.readouterr().out
    (trace,) = glob.glob(str(tmp_path / "tensorboard" / "plugins" / "profile" / "*" / "*.trace.json.gz"))
    with gzip.open(trace) as f:
        names = {event.get("name") for event in json.load(f)["traceEvents"]}
    assert any("train_loop" in str(name) for name in names)
    assert glob.glob(str(tmp_path / "tensorboard" / "plugins" / "profile" / "*" / "*.xplane.pb"))
