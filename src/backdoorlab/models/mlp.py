"""Fully connected ReLU network (the verification benchmark's family: 3-5 layers x 10-50 units)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .base import ImageClassifier


class MLP(ImageClassifier):
    """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear.  ``features`` = last hidden layer.

    ``body`` is an ``nn.Sequential`` of Flatten, Linear and ReLU only, so certified bound
    propagation can read the layers in order (``Normalize`` is affine and folds into the first)."""

    arch = "mlp"
    last_conv = None

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 hidden: Sequence[int] = (50, 50, 50),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__(input_shape, num_classes, mean, std)
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"MLP.hidden must be a non-empty list of positive widths; got {hidden!r}.")
        self.arch_kwargs["hidden"] = [int(h) for h in hidden]
        d = 1
        for s in self.input_shape:
            d *= s
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU()]
            d = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)
