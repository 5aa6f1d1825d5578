"""Common shape of every backdoorlab model.

Every model takes images in [0, 1] and normalizes them itself (``Normalize`` is its first layer),
so triggers live in pixel space.  Every model is ``head(features(x))``:

* ``model.features(x)`` -> penultimate activations, shape (N, D) — the one documented place that
  defenses reading representations use (spectral signatures, activation clustering, NC filter,
  NC pruning, Poison Frogs' feature collision, DF-TND);
* ``model.head`` -> the final ``nn.Linear(D, num_classes)``;
* ``model.last_conv`` -> dotted name of the last convolutional layer (Fine-Pruning prunes its
  channels; NAD distils attention there), or ``None`` for MLPs;
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
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if (std_t <= 0).any():
            raise ValueError(f"Normalize.std must be positive; got {list(map(float, std_t.flatten()))!r}.")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """Base: ``forward(x) = head(features(x))`` with ``features = body(normalize(x))``."""

    arch: str = ""
    last_conv: str | None = None
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
                            "mean": [float(v) for v in self.normalize.mean.flatten()],
                            "std": [float(v) for v in self.normalize.std.flatten()]}

    body: nn.Module
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def feature_dim(self) -> int:
        return self.head.in_features
