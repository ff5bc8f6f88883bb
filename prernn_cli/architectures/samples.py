"""The three small sample nets that ``sample_models/make_samples.py`` trains on real digits.

They mirror, at toy scale, the three backbones of the paper so that every design
can be tried end to end on a CPU:

* :class:`DigitVGG` — VGG-style, ``classifier.0`` is fc6 and ``classifier.3`` is fc7,
  exactly where torchvision's ``vgg16`` has them;
* :class:`DigitResNet` — ResNet-style, its last block ``layer3.1`` ends in
  conv2 → bn2 → + identity shortcut → relu → global average pooling (the paper's "res5c");
* :class:`DigitC3D` — C3D-style 3D net named as the common PyTorch C3D port
  (``conv1 … conv3b``, ``fc6``, ``fc7``, ``fc8``).

Inputs are normalised with mean = std = (0.5, 0.5, 0.5): 2D nets take images
``[N, 3, 32, 32]``, :class:`DigitC3D` takes snippets ``[N, 3, 4, 32, 32]``
(channels × frames × height × width). All three are ``torch.fx``-traceable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

__all__ = ["DigitVGG", "DigitResNet", "DigitC3D", "SAMPLE_MEAN", "SAMPLE_STD"]

#: Per-channel normalisation every sample net expects: ``(x - mean) / std`` with ``x`` in [0, 1].
SAMPLE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SAMPLE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _vgg_stage(in_channels: int, out_channels: int, convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for index in range(convs):
        layers += [
            nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return layers


class DigitVGG(nn.Module):
    """A VGG-style net for 32×32 RGB images.

    ``features`` (3×3 convs, ReLU, max-pooling; 3→32→32, 32→64→64, 64→64) maps the
    image to 64×4×4 = 1024 values, flattened and fed to ``classifier``:
    ``Linear(1024, 256)`` (fc6), ReLU, Dropout, ``Linear(256, 256)`` (fc7), ReLU,
    Dropout, ``Linear(256, num_classes)`` — the layout of torchvision's ``vgg16``.

    Args:
        num_classes: size of the output layer.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(*_vgg_stage(3, 32, 2), *_vgg_stage(32, 64, 2), *_vgg_stage(64, 64, 1))
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(256, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(256, num_classes),
        )
        for module in self.modules():  # He init for the convs: trains without BatchNorm
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, num_classes]`` for images ``x`` of shape ``[N, 3, 32, 32]``."""
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class DigitResNet(nn.Module):
    """A ResNet-style net for 32×32 RGB images, built from torchvision's ``BasicBlock``.

    Stem ``conv1`` (3×3, 3→32) + ``bn1`` + ReLU, then ``layer1`` (32 channels),
    ``layer2`` (64, stride 2) and ``layer3`` (128, stride 2), two blocks each, the
    first block of a downsampling stage with a 1×1 conv + BN ``downsample``; then
    ``avgpool`` (global average pooling), flatten and ``fc``. The last block
    ``layer3.1`` ends conv2 → bn2 → + identity shortcut → relu → avgpool: the
    sample's "res5c" conv layer.

    Args:
        num_classes: size of the output layer.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.inplanes = 32
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(32, blocks=2, stride=1)
        self.layer2 = self._make_layer(64, blocks=2, stride=2)
        self.layer3 = self._make_layer(128, blocks=2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers: list[nn.Module] = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, num_classes]`` for images ``x`` of shape ``[N, 3, 32, 32]``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class DigitC3D(nn.Module):
    """A C3D-style 3D net for snippets of 4 frames of 32×32 RGB, shaped ``[N, 3, 4, 32, 32]``.

    Module names follow the common PyTorch C3D port: ``conv1`` (3→32), ``pool1``
    (1, 2, 2), ``conv2`` (32→64), ``pool2`` (2, 2, 2), ``conv3a``/``conv3b``
    (64→64), ``pool3`` (2, 2, 2) → 64×1×4×4 = 1024 values, then ``fc6``
    (1024→256), ``fc7`` (256→256) and ``fc8`` (256→num_classes), with the port's
    shared ``relu`` and ``dropout`` (relu(fc6) → dropout → relu(fc7) → dropout → fc8).

    Args:
        num_classes: size of the output layer.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 32, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.conv2 = nn.Conv3d(32, 64, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv3a = nn.Conv3d(64, 64, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.conv3b = nn.Conv3d(64, 64, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool3 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.fc6 = nn.Linear(64 * 1 * 4 * 4, 256)
        self.fc7 = nn.Linear(256, 256)
        self.fc8 = nn.Linear(256, num_classes)
        self.dropout = nn.Dropout(p=0.5)
        self.relu = nn.ReLU()
        for module in self.modules():  # as DigitVGG: He init for the convs
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, num_classes]`` for snippets ``x`` of shape ``[N, 3, 4, 32, 32]``."""
        h = self.pool1(self.relu(self.conv1(x)))
        h = self.pool2(self.relu(self.conv2(h)))
        h = self.relu(self.conv3a(h))
        h = self.pool3(self.relu(self.conv3b(h)))
        h = torch.flatten(h, 1)
        h = self.dropout(self.relu(self.fc6(h)))
        h = self.dropout(self.relu(self.fc7(h)))
        return self.fc8(h)
