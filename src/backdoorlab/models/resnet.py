"""PreAct-ResNet18 (He et al. 2016, identity mappings), the CIFAR-10 backbone of BackdoorBench."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import ImageClassifier


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class _Body(nn.Module):
    def __init__(self, in_ch: int, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, 1, 1, bias=False)
        layers, planes, in_planes = [], width, width
        for i, stride in enumerate((1, 2, 2, 2)):
            blocks = [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            layers.append(nn.Sequential(*blocks))
            in_planes = planes
            planes *= 2 if i < 3 else 1
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(in_planes)
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.relu(self.bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class PreActResNet18(ImageClassifier):
    """PreAct-ResNet18; ``width`` scales all channels (64 = the standard network)."""

    arch = "preact-resnet18"
    last_conv = "body.layer4"   # NAD attention / Grad-CAM: the last stage's output
    prune_layer = "body.bn"     # Fine-Pruning: the channels after the final pre-activation BN + ReLU

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 width: int = 64, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__(input_shape, num_classes, mean, std)
        self.arch_kwargs["width"] = int(width)
        self.body = _Body(self.input_shape[0], int(width))
        self.head = nn.Linear(self.body.out_dim, num_classes)
