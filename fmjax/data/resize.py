"""Resizing one image to the run's size, as torchvision's Resize does on a PIL image."""

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """One image [h, w, c] (c 1, 3 or 4) as RGB [size, size, 3], resized as torchvision's Resize does.

    PIL's bilinear filter, which averages the pixels under each output pixel
    when shrinking. uint8 stays uint8, as PIL rounds it; float32 in [0, 1]
    stays float32, each channel resized on its own.
    """
    channels = image[..., :3] if image.shape[-1] == 4 else image
    if channels.shape[:2] != (size, size):
        if channels.dtype == np.uint8:
            squeezed = channels[..., 0] if channels.shape[-1] == 1 else channels
            resized = np.asarray(Image.fromarray(squeezed).resize((size, size), Image.BILINEAR))
            channels = resized.reshape(size, size, -1)
        else:
            channels = np.stack(
                [
                    np.asarray(
                        Image.fromarray(channels[..., c].astype(np.float32), mode="F").resize(
                            (size, size), Image.BILINEAR
                        )
                    )
                    for c in range(channels.shape[-1])
                ],
                axis=-1,
            )
    if channels.shape[-1] == 1:
        channels = np.repeat(channels, 3, axis=-1)
    return np.ascontiguousarray(channels)
