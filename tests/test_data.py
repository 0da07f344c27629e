"""Tests of fmjax.data: the three sources and the batching guarantees.

The guarantees are what resumption and multi-host training rely on: an
epoch's order depends only on (seed, epoch), start_batch skips without reading,
processes split each global batch, and the padded test split counts every
example exactly once.
"""

import dataclasses
import io

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import prepared
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fmjax.config import base_config
from fmjax.data import Dataset, load_dataset
from fmjax.data.batches import shuffled_train_indices
from fmjax.data.split import Split, array_split
from fmjax.errors import UserError

IMAGE_SIZE = 8


def make_config(**data_fields) -> ml_collections.ConfigDict:
    config = base_config()
    config.image_size = IMAGE_SIZE
    config.data.std = (0.25, 0.25, 0.25)
    config.data.update(data_fields)
    return config


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(make_config())


def expected_digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    raw = load_digits()
    _, test_images, _, test_labels = train_test_split(
        raw.images, raw.target, test_size=0.25, random_state=0, stratify=raw.target
    )
    return test_images / 16.0, test_labels


def concatenated(batches, key: str) -> np.ndarray:
    return np.concatenate([batch[key] for batch in batches])


def assert_one_line_naming(error: pytest.ExceptionInfo, thing) -> None:
    message = str(error.value)
    assert str(thing) in message
    assert "\n" not in message


# ---------------------------------------------------------------- digits


def test_digits_sizes_labels_and_shapes(digits):
    assert (digits.num_train, digits.num_test) == (1347, 450)
    assert digits.num_classes == 10
    assert digits.class_names == [str(digit) for digit in range(10)]
    assert digits.image_shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert digits.steps_per_epoch(100) == 13
    assert digits.num_test_batches(100) == 5
    batch = next(digits.train_batches(0, 32))
    assert batch["image"].shape == (32, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    # Stratified: every class appears in the test split.
    test_labels = concatenated(digits.test_batches(450), "label")
    assert set(test_labels) == set(range(10))


def test_digits_test_split_is_in_order_with_grey_copied_to_rgb(digits):
    images, labels = expected_digits_test_split()
    batch = next(digits.test_batches(450))
    np.testing.assert_array_equal(batch["label"], labels)
    # At the source's own 8x8 size, resizing leaves the pixels as they are.
    for channel in range(3):
        np.testing.assert_allclose(batch["image"][..., channel], images, atol=1e-6)


def test_training_order_is_a_function_of_seed_and_epoch(digits):
    def epoch_labels(dataset, epoch):
        return concatenated(dataset.train_batches(epoch, 64), "label")

    first = epoch_labels(digits, 0)
    np.testing.assert_array_equal(first, epoch_labels(digits, 0))
    assert not np.array_equal(first, epoch_labels(digits, 1))
    assert not np.array_equal(first, epoch_labels(dataclasses.replace(digits, seed=1), 0))
    # The documented order: a numpy permutation seeded by (seed, epoch).
    order = np.random.default_rng([0, 3]).permutation(digits.num_train)
    np.testing.assert_array_equal(
        shuffled_train_indices(0, 3, digits.num_train, 64, 0, 0, 1).reshape(-1),
        order[: 21 * 64],
    )


def test_start_batch_resumes_the_same_stream(digits):
    full = list(digits.train_batches(2, 100))
    resumed = list(digits.train_batches(2, 100, start_batch=10))
    assert len(resumed) == len(full) - 10 == 3
    for skipped_ahead, uninterrupted in zip(resumed, full[10:]):
        np.testing.assert_array_equal(skipped_ahead["image"], uninterrupted["image"])
        np.testing.assert_array_equal(skipped_ahead["label"], uninterrupted["label"])
    assert list(digits.train_batches(2, 100, start_batch=13)) == []


def test_start_batch_never_reads_the_skipped_examples():
    num_examples, batch_size, start_batch = 40, 8, 3
    skipped = shuffled_train_indices(7, 0, num_examples, batch_size, 0, 0, 1)[:start_batch]

    def load_unless_skipped(indices):
        if np.isin(indices, skipped).any():
            raise AssertionError(f"read skipped examples {indices}")
        return np.zeros((len(indices), 4, 4, 3), np.uint8)

    split = Split(np.zeros(num_examples, np.int32), load_unless_skipped, np.dtype(np.uint8))
    dataset = Dataset("probe", ["only"], (4, 4, 3), 7, split, split)
    batches = list(dataset.train_batches(0, batch_size, start_batch=start_batch))
    assert len(batches) == num_examples // batch_size - start_batch
    with pytest.raises(AssertionError, match="read skipped examples"):
        list(dataset.train_batches(0, batch_size))


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_together_read_the_one_process_batches(digits, process_count):
    batch_size = 64
    single = list(digits.train_batches(1, batch_size, start_batch=18))
    per_process = [
        list(digits.train_batches(1, batch_size, start_batch=18, process_index=p,
                                  process_count=process_count))
        for p in range(process_count)
    ]
    for k, whole in enumerate(single):
        parts = [batches[k] for batches in per_process]
        assert parts[0]["image"].shape[0] == batch_size // process_count
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key])


def test_every_train_example_is_read_by_exactly_one_process_per_epoch():
    num_train, batch_size = 103, 12
    shares = [shuffled_train_indices(5, 2, num_train, batch_size, 0, p, 3) for p in range(3)]
    read = np.concatenate([share.reshape(-1) for share in shares])
    assert len(read) == len(set(read)) == (num_train // batch_size) * batch_size


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_test_batches_are_padded_masked_and_complete(digits, process_count):
    _, true_labels = expected_digits_test_split()
    batch_size = 48  # 450 test examples: 10 batches, the last with 18 real.
    per_process = [
        list(digits.test_batches(batch_size, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    assert {len(batches) for batches in per_process} == {digits.num_test_batches(batch_size)}
    # Process order within each batch, then batch order: the global stream.
    in_global_order = [batches[k] for k in range(len(per_process[0])) for batches in per_process]
    mask = concatenated(in_global_order, "mask")
    labels = concatenated(in_global_order, "label")
    assert mask.dtype == np.float32 and mask.sum() == digits.num_test
    np.testing.assert_array_equal(labels[mask == 1.0], true_labels)
    assert mask[: digits.num_test].all() and not mask[digits.num_test :].any()


def test_batch_size_mistakes_are_user_errors(digits):
    with pytest.raises(UserError, match="multiple of 4"):
        digits.train_batches(0, 30, process_count=4)
    with pytest.raises(UserError, match="multiple of 4"):
        digits.test_batches(30, process_count=4)
    with pytest.raises(UserError, match="1347 training examples"):
        digits.steps_per_epoch(2000)


def test_config_mistakes_are_user_errors():
    with pytest.raises(UserError, match="'csv'"):
        load_dataset(make_config(source="csv"))
    with pytest.raises(UserError, match="test_fraction"):
        load_dataset(make_config(test_fraction=1.5))
    with pytest.raises(UserError, match="config.data.std"):
        load_dataset(make_config(normalize=True, std=(0.5, 0.0, 0.5)))


# ---------------------------------------------------------------- image_folder


def save_image(path, pixels: np.ndarray, image_format: str, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    image = image.convert(mode) if mode else image
    image.save(path, image_format)


def solid(colour, size=12) -> np.ndarray:
    return np.full((size, size, len(colour)), colour, np.uint8)


@pytest.fixture
def image_root(tmp_path):
    """A tiny folder with one image of each supported kind, and some noise."""
    root = tmp_path / "pets"
    train, test = root / "train", root / "test"
    save_image(train / "dog" / "grey.png", np.full((10, 14), 51, np.uint8), "PNG")
    save_image(train / "dog" / "rgba.png", solid((255, 0, 0, 128)), "PNG")
    save_image(train / "cat" / "animated.gif", solid((0, 0, 255)), "GIF", mode="P")
    save_image(train / "cat" / "photo.BMP", solid((0, 255, 0)), "BMP")
    save_image(train / "bird" / "nested" / "photo.JPG", solid((255, 255, 255), 20), "JPEG")
    (train / "bird" / ".DS_Store").write_bytes(b"\x00\x01 not an image")
    (train / "bird" / "notes.txt").write_text("not an image either")
    (train / ".hidden_class").mkdir()
    save_image(test / "dog" / "a.png", solid((0, 0, 0)), "PNG")
    save_image(test / "cat" / "b.jpeg", solid((255, 255, 255)), "JPEG")
    return root


def test_image_folder_classes_sorted_and_images_rgb_in_unit_range(image_root):
    dataset = load_dataset(make_config(source="image_folder", root=str(image_root)))
    assert dataset.class_names == ["bird", "cat", "dog"]
    assert (dataset.num_train, dataset.num_test) == (5, 2)
    batch = prepared(dataset, next(dataset.test_batches(2)))
    assert batch["image"].shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(batch["label"], [1, 2])  # cat/b.jpeg, dog/a.png
    np.testing.assert_allclose(batch["image"][0], 1.0, atol=2 / 255)
    np.testing.assert_allclose(batch["image"][1], 0.0)

    (batch,) = dataset.train_batches(0, 5)
    batch = prepared(dataset, batch)
    assert batch["image"].shape == (5, IMAGE_SIZE, IMAGE_SIZE, 3)
    # Every image is one solid colour; collect them per class.
    colours = {label: [] for label in range(3)}
    for image, label in zip(batch["image"], batch["label"]):
        np.testing.assert_allclose(image, np.broadcast_to(image[0, 0], image.shape), atol=1e-6)
        colours[int(label)].append(tuple(np.round(image[0, 0], 2)))
    assert colours[0] == [(1.0, 1.0, 1.0)]  # bird: the nested upper-case .JPG
    assert sorted(colours[1]) == [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0)]  # cat: GIF blue, BMP green
    assert sorted(colours[2]) == [(0.2, 0.2, 0.2), (1.0, 0.0, 0.0)]  # dog: grey, RGBA red


def test_image_folder_normalization(image_root):
    plain = load_dataset(make_config(source="image_folder", root=str(image_root)))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    normalized = load_dataset(
        make_config(source="image_folder", root=str(image_root), normalize=True, mean=mean, std=std)
    )
    expected = (prepared(plain, next(plain.test_batches(2)))["image"] - np.array(mean)) / np.array(std)
    actual = prepared(normalized, next(normalized.test_batches(2)))["image"]
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def test_image_folder_missing_folders(tmp_path, image_root):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as error:
        load_dataset(make_config(source="image_folder", root=str(missing)))
    assert_one_line_naming(error, missing)

    for split in ("test", "train"):
        (image_root / split).rename(tmp_path / f"moved_{split}")
        with pytest.raises(UserError) as error:
            load_dataset(make_config(source="image_folder", root=str(image_root)))
        assert_one_line_naming(error, image_root / split)
        (tmp_path / f"moved_{split}").rename(image_root / split)


def test_image_folder_split_without_images(tmp_path):
    root = tmp_path / "data"
    save_image(root / "train" / "a" / "x.png", solid((1, 2, 3)), "PNG")
    (root / "test" / "a").mkdir(parents=True)
    (root / "test" / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError) as error:
        load_dataset(make_config(source="image_folder", root=str(root)))
    assert_one_line_naming(error, root / "test")


def test_image_folder_test_class_unknown_to_train(image_root):
    save_image(image_root / "test" / "fish" / "c.png", solid((9, 9, 9)), "PNG")
    with pytest.raises(UserError) as error:
        load_dataset(make_config(source="image_folder", root=str(image_root)))
    assert_one_line_naming(error, image_root / "test" / "fish")


def test_image_folder_garbage_png_is_caught_when_listed(image_root):
    garbage = image_root / "train" / "cat" / "broken.png"
    garbage.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(UserError) as error:
        load_dataset(make_config(source="image_folder", root=str(image_root)))
    assert_one_line_naming(error, garbage)


def test_image_folder_colour_palette_bmp_decodes_to_its_colours(image_root):
    palette_bmp = image_root / "train" / "cat" / "palette.bmp"
    left_red_right_blue = np.repeat([[0] * 8 + [1] * 8], 8, axis=0).astype(np.uint8)
    image = Image.fromarray(left_red_right_blue, "P")
    image.putpalette([200, 10, 10, 10, 10, 200] + [0] * 762)
    image.save(palette_bmp, "BMP")
    config = make_config(source="image_folder", root=str(image_root))
    dataset = load_dataset(config)
    # cat/ in name order: animated.gif, palette.bmp, photo.BMP.
    position = [i for i, label in enumerate(dataset.train_split.labels) if label == 1][1]
    pixels = dataset.train_split.load(np.array([position]))[0]
    # Resized from 8x16 to 8x8: the left half red, the right half blue.
    np.testing.assert_array_equal(pixels[:, :3], np.broadcast_to([200, 10, 10], (8, 3, 3)))
    np.testing.assert_array_equal(pixels[:, 5:], np.broadcast_to([10, 10, 200], (8, 3, 3)))


def test_image_folder_truncated_jpeg_is_named_when_decoded(image_root):
    rng = np.random.default_rng(0)
    encoded = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(encoded, "JPEG")
    truncated = image_root / "test" / "dog" / "truncated.jpg"
    # Half a JPEG: its header is intact, so only decoding finds the damage.
    truncated.write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    dataset = load_dataset(make_config(source="image_folder", root=str(image_root)))
    with pytest.raises(UserError) as error:
        list(dataset.test_batches(1))
    assert_one_line_naming(error, truncated)


# ---------------------------------------------------------------- tfds


def test_tfds_mnist_from_mock_data():
    with tfds.testing.mock_data(num_examples=24):
        dataset = load_dataset(make_config(source="tfds", name="mnist"))
    assert dataset.num_classes == 10
    assert dataset.class_names == [str(digit) for digit in range(10)]
    assert (dataset.num_train, dataset.num_test) == (24, 24)
    batch = next(dataset.train_batches(0, 8))
    assert batch["image"].dtype == np.uint8  # mnist's 8-bit pixels, kept as they are
    batch = prepared(dataset, batch)
    assert batch["image"].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch["label"].dtype == np.int32 and batch["label"].max() < 10
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    # Grey source: the three channels are copies.
    np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])
    assert next(dataset.test_batches(10, process_count=2))["mask"].shape == (5,)


def test_tfds_absent_data_set_says_how_to_prepare_it(tmp_path):
    empty_data_dir = tmp_path / "tfds_data"
    empty_data_dir.mkdir()
    with pytest.raises(UserError) as error:
        load_dataset(make_config(source="tfds", name="mnist", data_dir=str(empty_data_dir)))
    assert_one_line_naming(error, empty_data_dir)
    assert "mnist" in str(error.value) and "tfds build" in str(error.value)


def test_tfds_unknown_name():
    with pytest.raises(UserError, match="'no_such_data_set'"):
        load_dataset(make_config(source="tfds", name="no_such_data_set"))


def test_uint8_pixels_are_prepared_as_to_tensor_scales_them():
    images = np.array([[[[0], [255]], [[51], [102]]]], np.uint8)
    split = array_split(images, np.array([0]), 2)
    assert split.pixel_dtype == np.uint8
    dataset = Dataset("probe", ["only"], (2, 2, 3), 0, split, split)
    (batch,) = dataset.test_batches(1)
    np.testing.assert_array_equal(batch["image"][0, ..., 1], images[0, ..., 0])
    np.testing.assert_allclose(
        prepared(dataset, batch)["image"][0, ..., 0], [[0.0, 1.0], [0.2, 0.4]], rtol=1e-7
    )
