"""scikit-learn's 8x8 handwritten digits, split into train and test once.

The 1797 images ship inside scikit-learn, so this source needs no download;
it is the data set for quick runs and tests.
"""

import numpy as np

from fmjax.data.split import Split, array_split
from fmjax.errors import UserError

# load_digits counts ink in each 8x8 cell from 0 to 16.
_MAX_PIXEL_VALUE = 16.0


def digits_splits(
    test_fraction: float, split_seed: int, image_size: int
) -> tuple[list[str], Split, Split]:
    """Class names and the (train, test) splits of the digits data set.

    Args:
      test_fraction: share of the images held out for testing, in (0, 1).
      split_seed: fixes which images are held out; stratified by label so both
        splits keep the classes' proportions.
      image_size: the images are resized to image_size x image_size once.
    """
    if not 0.0 < test_fraction < 1.0:
        raise UserError(
            f"digits test fraction {test_fraction} is outside (0, 1); "
            "set config.data.test_fraction to e.g. 0.25"
        )
    # Imported here: scikit-learn takes a second to import, which runs on
    # other data sets need not pay.
    from sklearn.datasets import load_digits  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    images = (digits.images / _MAX_PIXEL_VALUE).astype(np.float32)[..., np.newaxis]
    train_images, test_images, train_labels, test_labels = train_test_split(
        images,
        digits.target,
        test_size=test_fraction,
        random_state=split_seed,
        stratify=digits.target,
    )
    class_names = [str(digit) for digit in digits.target_names]
    return (
        class_names,
        array_split(train_images, train_labels, image_size),
        array_split(test_images, test_labels, image_size),
    )
