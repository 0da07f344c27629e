"""TensorFlow Datasets image classification data sets, read into memory once.

Each split is read once as uint8 numpy arrays and then served by index like
the other sources. tfds.data_source would give random access without the
memory cost, but only for data prepared as array_record, which `tfds build`
does not write by default; reading into memory works for whatever the user
prepared. The limits: the whole split must fit in host memory (mnist takes
47 MB, cifar10 150 MB) and every image must have the same shape.

fmjax never downloads: a data set has to be prepared beforehand.
"""

import numpy as np

from fmjax.data.split import Split, array_split
from fmjax.data.tensorflow_import import import_tensorflow
from fmjax.errors import UserError

_SPLITS = ("train", "test")
# Enough to keep the copy into numpy fast without a large tf.data buffer.
_READ_BATCH_SIZE = 1024


def tfds_splits(
    name: str, data_dir: str, num_classes_if_unnamed: int, image_size: int
) -> tuple[list[str], Split, Split]:
    """Class names and the (train, test) splits of the TFDS data set `name`.

    Args:
      name: the TFDS name, e.g. "mnist" or "cifar10".
      data_dir: where the data set was prepared; "" for the TFDS default.
      num_classes_if_unnamed: the class count to use when the label feature
        does not say (it is not a ClassLabel).
      image_size: the images are resized to image_size x image_size once.
    """
    import_tensorflow()
    import tensorflow_datasets as tfds  # noqa: PLC0415 - seconds to import; only this source needs it

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.DatasetNotFoundError:
        raise UserError(
            f"{name!r} is not a TFDS data set; set config.data.name to one that "
            "tfds.list_builders() lists"
        ) from None
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    image_shape = builder.info.features[image_key].shape
    if None in image_shape or image_shape[-1] not in (1, 3):
        raise UserError(
            f"TFDS data set {name} has images of shape {image_shape}; fmjax reads "
            "only fixed-size grey or RGB images, so use the image_folder source for it"
        )
    label_feature = builder.info.features[label_key]
    if isinstance(label_feature, tfds.features.ClassLabel):
        class_names = list(label_feature.names)
    else:
        class_names = [str(label) for label in range(num_classes_if_unnamed)]
    # A builder that describes no splits (as mocked ones do) is left to fail on reading.
    known_splits = builder.info.splits
    missing = [split for split in _SPLITS if known_splits and split not in known_splits]
    if missing:
        raise UserError(
            f"TFDS data set {name} has no {missing[0]!r} split (it has "
            f"{', '.join(builder.info.splits)}); choose a data set with train and test splits"
        )
    train_split, test_split = (
        _read_split(tfds, builder, split, image_key, label_key, data_dir, image_size)
        for split in _SPLITS
    )
    return class_names, train_split, test_split


def _read_split(
    tfds, builder, split: str, image_key: str, label_key: str, data_dir: str, image_size: int
) -> Split:
    try:
        examples = builder.as_dataset(split=split)
    except AssertionError:
        # TFDS signals "not prepared in data_dir" with an AssertionError.
        raise UserError(
            f"TFDS data set {builder.name} is not prepared in "
            f"{data_dir or 'the default TFDS data_dir'} and fmjax does not download; "
            f"run `tfds build {builder.name} --data_dir=DIR` on a machine with network, "
            "copy DIR here and set config.data.data_dir to it"
        ) from None
    images, labels = [], []
    for batch in tfds.as_numpy(examples.batch(_READ_BATCH_SIZE)):
        images.append(batch[image_key])
        labels.append(batch[label_key])
    return array_split(np.concatenate(images), np.concatenate(labels), image_size)
