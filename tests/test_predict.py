"""Prediction from a trained run: the training preprocessing, consistent probabilities, user errors."""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from conftest import one_error_line
from conftest import predict as run_predict
from PIL import Image

import fmjax
from fmjax.core.models import create_model
from fmjax.data import load_dataset
from fmjax.tools import predict

# The tiny run's 8x8 digits, the size they are stored at, so the reference below needs no resize.
IMAGE_SIZE = 8
NUM_IMAGES = 12
DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    return str(tiny_run)


@pytest.fixture(scope="module")
def digit_files(trained_run, tmp_path_factory):
    """The first test digits as grey PNGs in a folder tree.

    Returns the folder, the files, their labels and the training pipeline's images of them.
    """
    with open(os.path.join(trained_run, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    batch = next(load_dataset(config).test_batches(NUM_IMAGES))
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for index, (image, label) in enumerate(zip(batch["image"], batch["label"])):
        # Half of them one folder down, with an upper-case extension, to test the walk.
        name = f"{index:02d}_{label}.PNG" if index % 2 else f"{index:02d}_{label}.png"
        path = folder / ("nested" if index % 2 else "") / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    (folder / "notes.txt").write_text("not an image")
    return str(folder), paths, batch["label"], batch["image"]


def test_folders_are_walked_for_images_in_sorted_order(digit_files):
    folder, paths, _, _ = digit_files
    assert predict.find_image_paths([folder]) == sorted(paths, key=lambda p: (os.path.dirname(p), p))
    assert predict.find_image_paths([paths[3], paths[0]]) == [paths[3], paths[0]]


def test_images_are_preprocessed_as_the_training_pipeline_does(trained_run, digit_files):
    _, paths, _, training_images = digit_files
    predictor = predict.load_predictor(trained_run, batch_size=5)
    batches = list(predictor.preprocessed_batches(paths))
    images = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
    assert images.shape == (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3)
    # The PNGs hold 8-bit pixels; training read the digits unrounded.
    np.testing.assert_allclose(images, training_images, atol=0.5 / 255 + 1e-6)


def test_predictions_match_the_model_applied_to_the_same_pixels(trained_run, digit_files):
    _, paths, labels, _ = digit_files
    predictor = predict.load_predictor(trained_run, batch_size=5)  # 3 batches, the last padded
    results = predictor.predict(paths, top_k=10)

    with open(os.path.join(trained_run, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    model = create_model(config.model, num_classes=10)
    pixels = np.stack([np.asarray(Image.open(p), np.float32) / 255.0 for p in paths])
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    expected = np.asarray(jax.nn.softmax(model.apply({"params": fmjax.restore_params(trained_run)}, rgb)))

    assert [r["path"] for r in results] == paths
    for result, expected_row in zip(results, expected):
        probabilities = [p["probability"] for p in result["predictions"]]
        assert sorted(p["class"] for p in result["predictions"]) == DIGITS
        assert probabilities == sorted(probabilities, reverse=True)
        assert result["predictions"][0]["class"] == DIGITS[int(np.argmax(expected_row))]
        np.testing.assert_allclose(
            probabilities, np.sort(expected_row)[::-1], rtol=1e-5, atol=1e-6
        )
    # Two epochs learn the digits well beyond chance.
    top1 = [int(r["predictions"][0]["class"]) for r in results]
    assert np.mean(np.array(top1) == labels) >= 0.5


def test_resize_and_normalisation_follow_the_run(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((20, 30, 3), 153, np.uint8)).save(path)  # 153 / 255 = 0.6
    predictor = predict.Predictor(
        variables={},
        logits_fn=lambda variables, images: images.reshape(len(images), -1)[:, :2],
        class_names=["a", "b"],
        image_size=4,
        pixel_mean=(0.5, 0.4, 0.2),
        pixel_std=(0.5, 0.5, 0.5),
        step=0,
    )
    (batch,) = predictor.preprocessed_batches([str(path)])
    assert batch["image"].shape == (1, 4, 4, 3)
    np.testing.assert_allclose(batch["image"][0, 0, 0], [0.2, 0.4, 0.8], atol=1e-6)


def test_script_prints_top_k_lines_and_json(trained_run, digit_files, capsys):
    folder, paths, _, _ = digit_files
    assert run_predict("--workdir", trained_run, paths[0], "--top_k", "2") == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"{paths[0]}: ") and line.count("%") == 2

    assert run_predict("--workdir", trained_run, "--json", paths[0], paths[1]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == paths[:2]
    assert all(len(r["predictions"]) == 3 for r in results)
    assert set(results[0]["predictions"][0]) == {"class", "probability"}


def test_user_errors_are_one_line_and_exit_2(trained_run, digit_files, tmp_path, capsys):
    _, paths, _, _ = digit_files
    missing = str(tmp_path / "missing")
    assert run_predict("--workdir", missing, paths[0]) == 2
    assert missing in one_error_line(capsys)

    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(os.path.join(trained_run, "config.json"), no_checkpoint)
    assert run_predict("--workdir", str(no_checkpoint), paths[0]) == 2
    assert "no checkpoint" in one_error_line(capsys)

    not_an_image = tmp_path / "fake.png"
    not_an_image.write_text("not a PNG")
    assert run_predict("--workdir", trained_run, paths[0], str(not_an_image)) == 2
    assert str(not_an_image) in one_error_line(capsys)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_predict("--workdir", trained_run, str(empty)) == 2
    assert "no images" in one_error_line(capsys)

    assert run_predict("--workdir", trained_run, missing) == 2
    assert f"{missing} does not exist" in one_error_line(capsys)

    assert run_predict("--workdir", trained_run, paths[0], "--top_k", "0") == 2
    assert "top_k" in one_error_line(capsys)

    assert run_predict(paths[0]) == 2
    assert "--workdir" in one_error_line(capsys)
