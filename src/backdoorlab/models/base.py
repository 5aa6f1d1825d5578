"""Common shape of every backdoorlab model.

Every model takes images in [0, 1] and normalizes them itself (``Normalize`` is its first layer),
so triggers live in pixel space.  Every model is ``head(features(x))``:

* ``model.features(x)`` -> penultimate activations, shape (N, D) — the one documented place that
  defenses reading representations use (spectral signatures, activation clustering, NC filter,
  NC pruning, Poison Frogs' feature collision, DF-TND);
* ``model.head`` -> the final ``nn.Linear(D, num_classes)``;
* ``model.last_conv`` -> dotted name of the last convolutional layer or stage (NAD distils
  attention there, Februus takes Grad-CAM there), or ``None`` for MLPs;
* ``model.prune_layer`` -> dotted name of the per-channel layer whose channels Fine-Pruning removes:
  a ``Conv2d`` followed by ReLU, or the ``BatchNorm2d`` before the last ReLU of a pre-activation
  ResNet (whose last stage ends in a residual sum, so zeroing a conv's filter would not remove the
  channel); ``None`` = ``last_conv``;
* ``model.arch`` / ``model.arch_kwargs`` -> how to rebuild it (written to the JSON sidecar).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, inside the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # plain floats first: the checks and the sidecar need no tensor (works on the meta device too)
        self.mean_values = [float(v) for v in (mean.flatten().tolist() if isinstance(mean, torch.Tensor) else mean)]
        self.std_values = [float(v) for v in (std.flatten().tolist() if isinstance(std, torch.Tensor) else std)]
        if any(not v > 0 for v in self.std_values):
            raise ValueError(f"Normalize.std must be positive; got {self.std_values!r}.")
        self.register_buffer("mean", torch.tensor(self.mean_values, dtype=torch.float32).reshape(-1, 1, 1))
        self.register_buffer("std", torch.tensor(self.std_values, dtype=torch.float32).reshape(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """Base: ``forward(x) = head(features(x))`` with ``features = body(normalize(x))``."""

    arch: str = ""
    last_conv: str | None = None
    prune_layer: str | None = None
    input_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        C = int(input_shape[0])
        self.input_shape = tuple(int(s) for s in input_shape)  # type: ignore[assignment]
        self.num_classes = int(num_classes)
        self.normalize = Normalize(mean if mean is not None else [0.5] * C,
                                   std if std is not None else [0.5] * C)
        self.arch_kwargs = {"input_shape": list(self.input_shape), "num_classes": self.num_classes,
                            "mean": list(self.normalize.mean_values), "std": list(self.normalize.std_values)}

    body: nn.Module
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def feature_dim(self) -> int:
        return self.head.in_features
