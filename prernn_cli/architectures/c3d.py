"""C3D (Tran et al., ICCV 2015), named as the common PyTorch port so its state_dicts load.

Module names and shapes follow the widely used port (``conv1 … conv5b``, ``pool1 …
pool5``, ``fc6``, ``fc7``, ``fc8``, a shared ``relu`` and ``dropout``): a state_dict
converted from the original Caffe Sports-1M weights loads with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["C3D", "C3D_MEAN", "C3D_STD"]

#: Preprocessing of the port, restated for inputs in [0, 1] (RGB): it subtracts the
#: per-channel Caffe means (R 102, G 98, B 90 on a 0-255 scale) and does not rescale,
#: i.e. ``(x - mean) / std`` with ``std = 1/255``.
C3D_MEAN: tuple[float, float, float] = (102.0 / 255.0, 98.0 / 255.0, 90.0 / 255.0)
C3D_STD: tuple[float, float, float] = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)


def _conv(in_channels: int, out_channels: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=(3, 3, 3), padding=(1, 1, 1))


class C3D(nn.Module):
    """The C3D network for snippets of 16 RGB frames of 112×112, shaped ``[N, 3, 16, 112, 112]``.

    Eight 3×3×3 convolutions (64, 128, 256, 256, 512, 512, 512, 512 channels) with
    ReLU and five max-poolings bring a snippet to 512×1×4×4 = 8192 values, then
    ``fc6`` (8192→4096), ``fc7`` (4096→4096) — the paper's converted layers — and
    ``fc8`` (4096→num_classes), with ReLU and dropout (p = 0.5) after fc6 and fc7.

    Args:
        num_classes: size of the output layer (487 for Sports-1M).
    """

    def __init__(self, num_classes: int = 487) -> None:
        super().__init__()
        self.conv1 = _conv(3, 64)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.conv2 = _conv(64, 128)
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv3a = _conv(128, 256)
        self.conv3b = _conv(256, 256)
        self.pool3 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv4a = _conv(256, 512)
        self.conv4b = _conv(512, 512)
        self.pool4 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv5a = _conv(512, 512)
        self.conv5b = _conv(512, 512)
        self.pool5 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 1, 1))
        self.fc6 = nn.Linear(8192, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(p=0.5)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, num_classes]`` for snippets ``x`` of shape ``[N, 3, 16, 112, 112]``."""
        h = self.pool1(self.relu(self.conv1(x)))
        h = self.pool2(self.relu(self.conv2(h)))
        h = self.relu(self.conv3a(h))
        h = self.pool3(self.relu(self.conv3b(h)))
        h = self.relu(self.conv4a(h))
        h = self.pool4(self.relu(self.conv4b(h)))
        h = self.relu(self.conv5a(h))
        h = self.pool5(self.relu(self.conv5b(h)))
        h = torch.flatten(h, 1)
        h = self.dropout(self.relu(self.fc6(h)))
        h = self.dropout(self.relu(self.fc7(h)))
        return self.fc8(h)
