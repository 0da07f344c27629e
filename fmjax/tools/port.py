"""Carry weights between the seed's PyTorch models and fmjax's Flax ones.

PyTorch stores a conv weight as [out, in, kh, kw] and a linear weight as
[out, in]; Flax wants [kh, kw, in, out] and [in, out]. Transposing is not
enough for the first dense layer: torch flattens an NCHW activation in
(channel, row, column) order and Flax flattens NHWC in (row, column, channel)
order, so that layer's input rows must also be permuted. This holds for
SeedCNN's fc1 (input: the conv output) and for MLP's fc1 (input: the image).

Both directions are pure functions on numpy arrays; torch is never imported
here, so fmjax runs without it.
"""

import re
from typing import Any, Mapping, Sequence, Union

import numpy as np

ImageSize = Union[int, Sequence[int]]
Params = dict[str, dict[str, np.ndarray]]

_CNN_KEYS = {
    f"{layer}.{name}" for layer in ("conv1", "fc1", "fc2") for name in ("weight", "bias")
}
_LINEAR_KEY = re.compile(r"fc(\d+)\.(weight|bias)")


def _to_numpy(value: Any) -> np.ndarray:
    """A float32 numpy copy of a torch tensor or array-like."""
    if hasattr(value, "detach"):
        # .float() first: numpy has no bfloat16, and params are float32 anyway.
        value = value.detach().cpu().float().numpy()
    return np.array(value, dtype=np.float32)


def _height_width(image_size: ImageSize) -> tuple[int, int]:
    """(height, width) from an int (square images) or a pair."""
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    height, width = image_size
    return int(height), int(width)


def _check_shape(key: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    """Raise a ValueError naming `key` unless `array` has shape `expected`."""
    if array.shape != tuple(expected):
        raise ValueError(
            f"state_dict[{key!r}] has shape {tuple(array.shape)}, expected {tuple(expected)}; "
            "check the model and the image size match the checkpoint"
        )


def chw_rows_to_hwc(weight: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """A torch linear weight over a CHW-flattened input, as a Flax kernel over HWC.

    Args:
      weight: [out, channels * height * width], input columns in (c, h, w) order.
      channels, height, width: the shape of the input before flattening.

    Returns:
      The kernel [height * width * channels, out], input rows in (h, w, c) order.
    """
    out = weight.shape[0]
    return weight.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, out)


def hwc_rows_to_chw(kernel: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """The inverse of `chw_rows_to_hwc`: a kernel [h*w*c, out] as a torch weight [out, c*h*w]."""
    out = kernel.shape[-1]
    return kernel.reshape(height, width, channels, out).transpose(3, 2, 0, 1).reshape(out, -1)


def _linear_layers(state_dict: Mapping[str, np.ndarray]) -> int:
    """The number N of linear layers fc1..fcN; ValueError for any other or missing key."""
    indices = set()
    for key in state_dict:
        match = _LINEAR_KEY.fullmatch(key)
        if match is None:
            raise ValueError(
                f"unexpected state_dict key {key!r}; expected the seed's Net "
                "(conv1, fc1, fc2) or an MLP (fc1..fcN)"
            )
        indices.add(int(match.group(1)))
    if not indices:
        raise ValueError("state_dict has no layers; expected conv1.* or fc1.* keys")
    count = max(indices)
    for i in range(1, count + 1):
        for name in ("weight", "bias"):
            key = f"fc{i}.{name}"
            if key not in state_dict:
                raise ValueError(f"state_dict is missing {key!r} for an MLP of {count} layers")
    return count


def _cnn_from_torch(sd: Mapping[str, np.ndarray], height: int, width: int) -> Params:
    """SeedCNN params from the arrays of the seed's Net."""
    missing, unexpected = sorted(_CNN_KEYS - sd.keys()), sorted(sd.keys() - _CNN_KEYS)
    if missing:
        raise ValueError(f"state_dict is missing {missing[0]!r} for the seed's Net")
    if unexpected:
        raise ValueError(f"unexpected state_dict key {unexpected[0]!r} for the seed's Net")
    conv = sd["conv1.weight"]
    if conv.ndim != 4 or conv.shape[2] != conv.shape[3]:
        raise ValueError(
            f"state_dict['conv1.weight'] has shape {conv.shape}; expected a square "
            "[out, in, k, k] kernel as SeedCNN builds"
        )
    features, _, kernel_size, _ = conv.shape
    # A VALID, stride-1 convolution shrinks each side by kernel_size - 1.
    out_h, out_w = height - kernel_size + 1, width - kernel_size + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"image size {height}x{width} is smaller than the {kernel_size}x{kernel_size} conv1"
        )
    hidden = sd["fc1.weight"].shape[0]
    num_classes = sd["fc2.weight"].shape[0]
    _check_shape("conv1.bias", sd["conv1.bias"], (features,))
    _check_shape("fc1.weight", sd["fc1.weight"], (hidden, features * out_h * out_w))
    _check_shape("fc1.bias", sd["fc1.bias"], (hidden,))
    _check_shape("fc2.weight", sd["fc2.weight"], (num_classes, hidden))
    _check_shape("fc2.bias", sd["fc2.bias"], (num_classes,))
    return {
        "conv1": {"kernel": conv.transpose(2, 3, 1, 0), "bias": sd["conv1.bias"]},
        "fc1": {
            "kernel": chw_rows_to_hwc(sd["fc1.weight"], features, out_h, out_w),
            "bias": sd["fc1.bias"],
        },
        "fc2": {"kernel": sd["fc2.weight"].T, "bias": sd["fc2.bias"]},
    }


def _mlp_from_torch(sd: Mapping[str, np.ndarray], height: int, width: int) -> Params:
    """MLP params from the arrays of a torch stack of linear layers fc1..fcN."""
    count = _linear_layers(sd)
    in_features = sd["fc1.weight"].shape[-1]
    if sd["fc1.weight"].ndim != 2 or in_features % (height * width):
        raise ValueError(
            f"state_dict['fc1.weight'] has shape {sd['fc1.weight'].shape}; its input size "
            f"is not channels * {height} * {width}; check the image size"
        )
    channels = in_features // (height * width)
    params = {}
    for i in range(1, count + 1):
        weight, bias = sd[f"fc{i}.weight"], sd[f"fc{i}.bias"]
        _check_shape(f"fc{i}.weight", weight, (weight.shape[0], in_features))
        _check_shape(f"fc{i}.bias", bias, (weight.shape[0],))
        # Only fc1 sees the image itself; deeper layers' inputs have no layout.
        kernel = chw_rows_to_hwc(weight, channels, height, width) if i == 1 else weight.T
        params[f"fc{i}"] = {"kernel": kernel, "bias": bias}
        in_features = weight.shape[0]
    return params


def from_torch(state_dict: Mapping[str, Any], image_size: ImageSize) -> Params:
    """Flax params for SeedCNN or MLP from a PyTorch state_dict of the seed's models.

    A state_dict with `conv1.*` keys is read as the seed's Net (conv1, fc1,
    fc2), any other as an MLP (fc1..fcN). Values may be torch tensors (on any
    device, any float dtype) or numpy arrays.

    Args:
      state_dict: the torch model's `state_dict()`.
      image_size: the image side, or (height, width), the torch model was built for.

    Returns:
      The params dict ({"conv1": {"kernel", "bias"}, "fc1": ...}) of float32
      numpy arrays, to pass as `model.apply({"params": params}, nhwc_images)`.

    Raises:
      ValueError: a key is missing or unexpected, or a shape does not fit the
        model at this image size; the message names the key.
    """
    height, width = _height_width(image_size)
    arrays = {key: _to_numpy(value) for key, value in state_dict.items()}
    if any(key.startswith("conv1.") for key in arrays):
        return _cnn_from_torch(arrays, height, width)
    return _mlp_from_torch(arrays, height, width)


def to_torch(
    params: Mapping[str, Mapping[str, Any]], image_size: ImageSize
) -> dict[str, np.ndarray]:
    """The inverse of `from_torch`: a state_dict of numpy arrays for the seed's torch models.

    Load it with `model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`.

    Args:
      params: SeedCNN params (conv1, fc1, fc2) or MLP params (fc1..fcN).
      image_size: the image side, or (height, width), of the model's input.

    Returns:
      {"conv1.weight": [O, I, k, k], "fc1.weight": [out, in], ...} as float32 numpy arrays.
    """
    height, width = _height_width(image_size)
    arrays = {
        layer: {name: np.array(value, dtype=np.float32) for name, value in leaves.items()}
        for layer, leaves in params.items()
    }
    dense = sorted((layer for layer in arrays if layer != "conv1"), key=lambda name: int(name[2:]))
    state_dict = {}
    if "conv1" in arrays:
        conv = arrays["conv1"]["kernel"]
        kernel_size, _, _, features = conv.shape
        state_dict["conv1.weight"] = conv.transpose(3, 2, 0, 1)
        state_dict["conv1.bias"] = arrays["conv1"]["bias"]
        # fc1 then sees the conv output, not the image.
        channels = features
        height, width = height - kernel_size + 1, width - kernel_size + 1
    else:
        channels = arrays["fc1"]["kernel"].shape[0] // (height * width)
    for layer in dense:
        kernel = arrays[layer]["kernel"]
        if layer == "fc1":
            state_dict[f"{layer}.weight"] = hwc_rows_to_chw(kernel, channels, height, width)
        else:
            state_dict[f"{layer}.weight"] = kernel.T
        state_dict[f"{layer}.bias"] = arrays[layer]["bias"]
    return state_dict
