"""Convolutional classifiers from the papers the seeds discuss."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .base import ImageClassifier


class BadNetsCNN(ImageClassifier):
    """BadNets' MNIST baseline (Gu et al. 2017, Table 1; seed 001): conv 16x5x5 -> avg-pool 2 ->
    conv 32x5x5 -> avg-pool 2 -> fc 512 -> fc K, ReLU activations.  281,034 parameters on MNIST.
    Works on any input size (fc input = 32 * ((H-4)/2-4)/2)^2), e.g. 3x32x32 for CIFAR-10."""

    arch = "badnets-cnn"
    last_conv = "body.conv2"

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__(input_shape, num_classes, mean, std)
        C, H, W = self.input_shape
        h, w = ((H - 4) // 2 - 4) // 2, ((W - 4) // 2 - 4) // 2
        self.body = nn.Sequential()
        self.body.add_module("conv1", nn.Conv2d(C, 16, 5))
        self.body.add_module("relu1", nn.ReLU())
        self.body.add_module("pool1", nn.AvgPool2d(2))
        self.body.add_module("conv2", nn.Conv2d(16, 32, 5))
        self.body.add_module("relu2", nn.ReLU())
        self.body.add_module("pool2", nn.AvgPool2d(2))
        self.body.add_module("flatten", nn.Flatten())
        self.body.add_module("fc1", nn.Linear(32 * h * w, 512))
        self.body.add_module("relu3", nn.ReLU())
        self.head = nn.Linear(512, num_classes)


class DigitsCNN(ImageClassifier):
    """A small CNN for scikit-learn's 8x8 digits: conv 16x3x3 -> conv 32x3x3 -> max-pool 2 ->
    fc 128 -> fc K.  Trains to ~97-98% in seconds on a CPU."""

    arch = "digits-cnn"
    last_conv = "body.conv2"

    def __init__(self, input_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__(input_shape, num_classes, mean, std)
        C, H, W = self.input_shape
        self.body = nn.Sequential()
        self.body.add_module("conv1", nn.Conv2d(C, 16, 3, padding=1))
        self.body.add_module("relu1", nn.ReLU())
        self.body.add_module("conv2", nn.Conv2d(16, 32, 3, padding=1))
        self.body.add_module("relu2", nn.ReLU())
        self.body.add_module("pool", nn.MaxPool2d(2))
        self.body.add_module("flatten", nn.Flatten())
        self.body.add_module("fc1", nn.Linear(32 * (H // 2) * (W // 2), 128))
        self.body.add_module("relu3", nn.ReLU())
        self.head = nn.Linear(128, num_classes)


class GTSRBCNN(ImageClassifier):
    """Neural Cleanse's traffic-sign model (Wang et al. 2019, Table VI): 6 conv (32, 32, 64, 64,
    128, 128; 3x3, max-pool after each pair) + dense 512 + dense K (43 for GTSRB)."""

    arch = "gtsrb-cnn"
    last_conv = "body.conv6"

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 43,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__(input_shape, num_classes, mean, std)
        C, H, W = self.input_shape
        self.body = nn.Sequential()
        chans = [C, 32, 32, 64, 64, 128, 128]
        for i in range(6):
            self.body.add_module(f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
            self.body.add_module(f"relu{i + 1}", nn.ReLU())
            if i % 2 == 1:
                self.body.add_module(f"pool{i // 2 + 1}", nn.MaxPool2d(2))
        self.body.add_module("flatten", nn.Flatten())
        self.body.add_module("fc1", nn.Linear(128 * (H // 8) * (W // 8), 512))
        self.body.add_module("relu7", nn.ReLU())
        self.head = nn.Linear(512, num_classes)
