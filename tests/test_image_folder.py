"""Image folders: the layout and class order, and folders as they come (junk files, odd formats, damaged images, empty classes).

Hidden and non-image files are left out and counted; upper-case extensions
count as images; CMYK JPEGs and 16-bit PNGs decode to exact RGB values in
[0, 1]; an unreadable image is an error naming it, or with
on_bad_image="skip" is left out and named at the start; a train/ class with
no readable image is an error.
"""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import prepared
from PIL import Image

from fmjax.config import base_config
from fmjax.data import load_dataset
from fmjax.errors import UserError

SIZE = 4  # pixels; the images are SIZE x SIZE, so resizing leaves them as they are
RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
RGB16 = RNG.integers(0, 65536, (SIZE, SIZE, 3), dtype=np.uint16)
CMYK = (100, 50, 200, 60)  # ink amounts, as PIL counts them
FOLDER_SIZE = 8  # the run's size for the folder of solid colours below, whose images are larger


def assert_one_line_naming(error: pytest.ExceptionInfo, thing) -> None:
    message = str(error.value)
    assert str(thing) in message
    assert "\n" not in message


def config(root, on_bad_image, image_size=SIZE):
    config = base_config()
    config.image_size = image_size
    config.data.source = "image_folder"
    config.data.root = str(root)
    config.data.on_bad_image = on_bad_image
    return config


def truncated_jpeg() -> bytes:
    encoded = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(encoded, "JPEG")
    return encoded.getvalue()[: len(encoded.getvalue()) // 2]  # header intact, body cut


@pytest.fixture
def messy_root(tmp_path):
    root = tmp_path / "photos"
    for folder in ("train/cat", "train/dog", "train/bird", "test/cat", "test/dog", "test/bird"):
        (root / folder).mkdir(parents=True)
    train, test = root / "train", root / "test"
    Image.fromarray(RGB8).save(train / "cat" / "a.png")
    (train / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (train / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (train / "cat" / "notes.txt").write_text("taken in 2019")
    Image.fromarray(RGB8).save(train / "dog" / "b.JPG", quality=95)
    (train / "dog" / "truncated.jpg").write_bytes(truncated_jpeg())
    (train / "dog" / "labels.csv").write_text("file,label\n")
    Image.fromarray(RGB8[::-1]).save(train / "bird" / "c.png")

    Image.fromarray(GREY16).save(test / "cat" / "1.PNG")  # PIL writes mode I;16 as 16-bit grey
    tf.io.write_file(str(test / "cat" / "2.png"), tf.io.encode_png(RGB16))
    Image.new("CMYK", (SIZE, SIZE), CMYK).save(test / "cat" / "3.JPG", quality=100)
    Image.fromarray(RGB8).save(test / "dog" / "4.png")
    (test / "dog" / "not_an_image.png").write_text("<html>404</html>")
    return root  # test/bird stays empty: a test split may lack a class


def test_skip_leaves_out_junk_and_bad_images_and_says_which(messy_root):
    lines = []
    dataset = load_dataset(config(messy_root, "skip"), report=lines.append)
    assert dataset.class_names == ["bird", "cat", "dog"]
    assert (dataset.num_train, dataset.num_test) == (3, 4)
    train, test = messy_root / "train", messy_root / "test"
    assert lines == [
        f"{train}: left out 2 hidden files (cat/.DS_Store, ...) and 2 non-image files (cat/notes.txt, ...)",
        f"{train}: skipped 1 unreadable image: dog/truncated.jpg",
        f"{test}: skipped 1 unreadable image: dog/not_an_image.png",
    ]
    (batch,) = dataset.train_batches(0, 3)
    assert sorted(batch["label"]) == [0, 1, 2]


def test_sixteen_bit_pngs_and_cmyk_jpegs_decode_exactly(messy_root):
    dataset = load_dataset(config(messy_root, "skip"), report=lambda line: None)
    assert dataset.test_split.pixel_dtype == np.float32  # it holds 16-bit images
    batch = prepared(dataset, next(dataset.test_batches(4)))
    np.testing.assert_array_equal(batch["label"], [1, 1, 1, 2])
    grey16, rgb16, cmyk, rgb8 = batch["image"]
    # 16 bits keep their range: 65535 is 1.0, not 255 levels of the high byte.
    np.testing.assert_array_equal(grey16, np.repeat(GREY16[..., None] / np.float32(65535), 3, axis=-1))
    np.testing.assert_array_equal(rgb16, RGB16 / np.float32(65535))
    np.testing.assert_array_equal(rgb8, RGB8 / np.float32(255))
    # A CMYK JPEG becomes RGB = (255 - ink) * (255 - black) / 255, rounded to
    # the nearest level, as PIL (and so torchvision's ImageFolder) converts it.
    ink = np.asarray(Image.open(messy_root / "test" / "cat" / "3.JPG")).astype(np.int64)
    rgb = np.round((255 - ink[..., :3]) * (255 - ink[..., 3:]) / 255)
    np.testing.assert_array_equal(cmyk, rgb.astype(np.float32) / np.float32(255))
    assert tuple(rgb[0, 0]) == (119, 157, 42)


def test_upper_case_jpeg_decodes_as_pil_does(messy_root):
    dataset = load_dataset(config(messy_root, "skip"), report=lambda line: None)
    (batch,) = dataset.train_batches(0, 3)
    (jpeg,) = batch["image"][batch["label"] == 2]  # dog/b.JPG
    expected = np.asarray(Image.open(messy_root / "train" / "dog" / "b.JPG"))
    np.testing.assert_array_equal(jpeg, expected)


def test_error_names_the_bad_image_in_one_line(messy_root):
    with pytest.raises(UserError) as error:
        load_dataset(config(messy_root, "error"), report=lambda line: None)
    assert str(error.value) == (
        f"{messy_root / 'test' / 'dog' / 'not_an_image.png'} is not a JPEG, PNG, GIF, BMP, PPM, PGM, TIFF or WebP image; "
        "replace or delete it (or set config.data.on_bad_image=skip)"
    )


def test_truncated_image_is_named_when_training_reaches_it(messy_root):
    (messy_root / "test" / "dog" / "not_an_image.png").unlink()
    dataset = load_dataset(config(messy_root, "error"), report=lambda line: None)
    with pytest.raises(UserError) as error:
        list(dataset.train_batches(0, 4))
    assert str(error.value) == (
        f"image {messy_root / 'train' / 'dog' / 'truncated.jpg'} cannot be decoded (damaged or "
        "truncated); replace or delete it (or set config.data.on_bad_image=skip)"
    )


@pytest.mark.parametrize("on_bad_image", ["error", "skip"])
def test_a_train_class_without_readable_images_is_an_error(messy_root, on_bad_image):
    fish = messy_root / "train" / "fish"
    fish.mkdir()
    (fish / ".DS_Store").write_bytes(b"\x00")
    (messy_root / "test" / "dog" / "not_an_image.png").unlink()
    with pytest.raises(UserError) as error:
        load_dataset(config(messy_root, on_bad_image), report=lambda line: None)
    assert str(error.value) == (
        f"class folder {fish} holds no readable images; add some or remove the folder "
        "(an empty class would shift the labels after it)"
    )


def test_an_unknown_choice_is_a_user_error(messy_root):
    with pytest.raises(UserError, match=r"config.data.on_bad_image is 'ignore'; use one of error, skip"):
        load_dataset(config(messy_root, "ignore"))


def test_links_up_the_tree_or_to_another_class_relabel_nothing(messy_root, tmp_path):
    (messy_root / "test" / "dog" / "not_an_image.png").unlink()
    plain = load_dataset(config(messy_root, "skip"), report=lambda line: None)
    cat = messy_root / "train" / "cat"
    os.symlink("..", cat / "loop")  # train/cat/loop -> train: every class again, as cat
    os.symlink(messy_root / "train" / "dog", cat / "dogs")  # another class's folder
    os.symlink(cat / "a.png", cat / "same.png")  # one image under two names
    os.mkfifo(cat / "b.png")  # would block the first read
    lines = []
    dataset = load_dataset(config(messy_root, "skip"), report=lines.append)
    np.testing.assert_array_equal(dataset.train_split.labels, plain.train_split.labels)
    assert dataset.num_train == plain.num_train == 3
    assert (
        f"{messy_root / 'train'}: left out 2 hidden files (cat/.DS_Store, ...) and 2 non-image files "
        "(cat/notes.txt, ...) and 1 non-regular file (cat/b.png) and 2 repeated folder links (cat/dogs, ...)"
    ) in lines


@pytest.mark.parametrize("extension, image_format", [
    (".webp", "WEBP"), (".tif", "TIFF"), (".TIFF", "TIFF"), (".ppm", "PPM"), (".pgm", "PPM"),
])
def test_every_format_torchvision_reads_trains_as_pil_decodes_it(tmp_path, extension, image_format):
    root = tmp_path / "photos"
    pixels = {}
    for split in ("train", "test"):
        for name, colour in (("a", RGB8), ("b", RGB8[::-1])):
            folder = root / split / name
            folder.mkdir(parents=True)
            image = Image.fromarray(colour)
            image = image.convert("L") if extension == ".pgm" else image
            path = folder / f"photo{extension}"
            save_args = {"lossless": True} if image_format == "WEBP" else {}
            image.save(path, image_format, **save_args)
            pixels[(split, name)] = np.asarray(Image.open(path).convert("RGB"))
    lines = []
    dataset = load_dataset(config(root, "error"), report=lines.append)
    assert lines == []
    assert dataset.test_split.pixel_dtype == np.uint8
    batch = next(dataset.test_batches(2))
    np.testing.assert_array_equal(batch["image"][0], pixels[("test", "a")])
    np.testing.assert_array_equal(batch["image"][1], pixels[("test", "b")])
    np.testing.assert_array_equal(batch["label"], [0, 1])


def test_a_folder_mostly_left_out_says_so_with_the_extensions(messy_root):
    (messy_root / "test" / "dog" / "not_an_image.png").unlink()
    for i in range(4):
        (messy_root / "train" / "bird" / f"photo{i}.heic").write_bytes(b"ftypheic")
    lines = []
    load_dataset(config(messy_root, "skip"), report=lines.append)
    assert (
        f"warning: {messy_root / 'train'}: most files are left out (4 .heic, 1 .csv, 1 .txt) and 4 images "
        "kept; fmjax reads .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp .gif"
    ) in lines


def test_a_sixteen_bit_tiff_keeps_its_range(tmp_path):
    root = tmp_path / "scans"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(GREY16).save(root / split / "a" / "scan.tif")  # PIL writes mode I;16
    dataset = load_dataset(config(root, "error"), report=lambda line: None)
    assert dataset.test_split.pixel_dtype == np.float32
    (batch,) = dataset.test_batches(1)
    np.testing.assert_array_equal(batch["image"][0], np.repeat(GREY16[..., None] / np.float32(65535), 3, axis=-1))


# ---------------------------------------------------------------- a folder of solid colours


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
    dataset = load_dataset(config(image_root, "error", image_size=FOLDER_SIZE))
    assert dataset.class_names == ["bird", "cat", "dog"]
    assert (dataset.num_train, dataset.num_test) == (5, 2)
    batch = prepared(dataset, next(dataset.test_batches(2)))
    assert batch["image"].shape == (2, FOLDER_SIZE, FOLDER_SIZE, 3)
    np.testing.assert_array_equal(batch["label"], [1, 2])  # cat/b.jpeg, dog/a.png
    np.testing.assert_allclose(batch["image"][0], 1.0, atol=2 / 255)
    np.testing.assert_allclose(batch["image"][1], 0.0)

    (batch,) = dataset.train_batches(0, 5)
    batch = prepared(dataset, batch)
    assert batch["image"].shape == (5, FOLDER_SIZE, FOLDER_SIZE, 3)
    # Every image is one solid colour; collect them per class.
    colours = {label: [] for label in range(3)}
    for image, label in zip(batch["image"], batch["label"]):
        np.testing.assert_allclose(image, np.broadcast_to(image[0, 0], image.shape), atol=1e-6)
        colours[int(label)].append(tuple(np.round(image[0, 0], 2)))
    assert colours[0] == [(1.0, 1.0, 1.0)]  # bird: the nested upper-case .JPG
    assert sorted(colours[1]) == [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0)]  # cat: GIF blue, BMP green
    assert sorted(colours[2]) == [(0.2, 0.2, 0.2), (1.0, 0.0, 0.0)]  # dog: grey, RGBA red


def test_image_folder_missing_folders(tmp_path, image_root):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as error:
        load_dataset(config(missing, "error", image_size=FOLDER_SIZE))
    assert_one_line_naming(error, missing)

    for split in ("test", "train"):
        (image_root / split).rename(tmp_path / f"moved_{split}")
        with pytest.raises(UserError) as error:
            load_dataset(config(image_root, "error", image_size=FOLDER_SIZE))
        assert_one_line_naming(error, image_root / split)
        (tmp_path / f"moved_{split}").rename(image_root / split)


def test_image_folder_split_without_images(tmp_path):
    root = tmp_path / "data"
    save_image(root / "train" / "a" / "x.png", solid((1, 2, 3)), "PNG")
    (root / "test" / "a").mkdir(parents=True)
    (root / "test" / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError) as error:
        load_dataset(config(root, "error", image_size=FOLDER_SIZE))
    assert_one_line_naming(error, root / "test")


def test_image_folder_test_class_unknown_to_train(image_root):
    save_image(image_root / "test" / "fish" / "c.png", solid((9, 9, 9)), "PNG")
    with pytest.raises(UserError) as error:
        load_dataset(config(image_root, "error", image_size=FOLDER_SIZE))
    assert_one_line_naming(error, image_root / "test" / "fish")


def test_image_folder_garbage_png_is_caught_when_listed(image_root):
    garbage = image_root / "train" / "cat" / "broken.png"
    garbage.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(UserError) as error:
        load_dataset(config(image_root, "error", image_size=FOLDER_SIZE))
    assert_one_line_naming(error, garbage)


def test_image_folder_colour_palette_bmp_decodes_to_its_colours(image_root):
    palette_bmp = image_root / "train" / "cat" / "palette.bmp"
    left_red_right_blue = np.repeat([[0] * 8 + [1] * 8], 8, axis=0).astype(np.uint8)
    image = Image.fromarray(left_red_right_blue, "P")
    image.putpalette([200, 10, 10, 10, 10, 200] + [0] * 762)
    image.save(palette_bmp, "BMP")
    dataset = load_dataset(config(image_root, "error", image_size=FOLDER_SIZE))
    # cat/ in name order: animated.gif, palette.bmp, photo.BMP.
    position = [i for i, label in enumerate(dataset.train_split.labels) if label == 1][1]
    pixels = dataset.train_split.load(np.array([position]))[0]
    # Resized from 8x16 to 8x8: the left half red, the right half blue.
    np.testing.assert_array_equal(pixels[:, :3], np.broadcast_to([200, 10, 10], (8, 3, 3)))
    np.testing.assert_array_equal(pixels[:, 5:], np.broadcast_to([10, 10, 200], (8, 3, 3)))


def test_image_folder_truncated_jpeg_is_named_when_decoded(image_root):
    truncated = image_root / "test" / "dog" / "truncated.jpg"
    truncated.write_bytes(truncated_jpeg())  # its header is intact, so only decoding finds the damage
    dataset = load_dataset(config(image_root, "error", image_size=FOLDER_SIZE))
    with pytest.raises(UserError) as error:
        list(dataset.test_batches(1))
    assert_one_line_naming(error, truncated)
