"""The seed's PyTorch models: the reference the port's tests check fmjax against, and the benchmark times.

`Net` is the seed's program with its fc1 size fixed (a VALID k x k conv of an
H x W image gives (H - k + 1) x (W - k + 1), not H x W); `MLP` is its fully
connected "DNN". Both take NCHW images. Importing this module builds nothing.
"""

from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class Net(nn.Module):
    """conv1 (VALID, stride 1) -> act -> flatten -> fc1 -> act -> fc2, as in the seed."""

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 224,
        channels: int = 3,
        features: int = 32,
        kernel_size: int = 5,
        hidden: int = 1000,
        activation: str = "relu",
    ):
        super().__init__()
        side = image_size - kernel_size + 1
        self.conv1 = nn.Conv2d(channels, features, kernel_size)
        self.fc1 = nn.Linear(features * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] for NCHW images [B, C, H, W]."""
        x = torch.flatten(self.act(self.conv1(x)), 1)
        return self.fc2(self.act(self.fc1(x)))


class MLP(nn.Module):
    """flatten -> (Linear -> act) per hidden width -> Linear, layers named fc1..fcN."""

    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 3 * 224 * 224,
        hidden: Sequence[int] = (1000,),
        activation: str = "relu",
    ):
        super().__init__()
        widths = [in_features, *hidden, num_classes]
        for i in range(len(widths) - 1):
            self.add_module(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))
        self.num_layers = len(widths) - 1
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] for NCHW images [B, C, H, W]."""
        x = torch.flatten(x, 1)
        for i in range(1, self.num_layers):
            x = self.act(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.num_layers}")(x)
