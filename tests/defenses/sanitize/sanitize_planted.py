"""Planted poison for sanitizer tests: a model whose representation is the image itself.

K classes of 4x4 images around prototypes (last pixel always dark); poison = images of other
classes with the last pixel set to 1 (the trigger), relabelled to class 0.  The head is the
nearest-prototype linear classifier plus a strong trigger weight into class 0, so a poisoned
image keeps its source class as the runner-up — exactly what each sanitizer must find is known.
"""
from __future__ import annotations

import torch
from torch import nn

from backdoorlab.data import DatasetInfo, ImageDataset

D, K = 16, 3


class PixelModel(nn.Module):
    """features(x) = x.flatten(1); head = prototype classifier + trigger -> 0."""

    arch = "pixel-model"

    def __init__(self, protos: torch.Tensor, trigger_weight: float = 20.0):
        super().__init__()
        self.head = nn.Linear(D, K)
        with torch.no_grad():
            self.head.weight.copy_(2 * protos)
            self.head.bias.copy_(-(protos ** 2).sum(1))
            self.head.weight[0, -1] += trigger_weight

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def planted(n_per_class: int = 200, n_poison: int = 20, seed: int = 0, noise: float = 0.06):
    """(model, dataset, poison mask): ``n_poison`` triggered images of classes 1..K-1 labelled 0."""
    g = torch.Generator().manual_seed(seed)
    protos = 0.2 + 0.6 * torch.rand(K, D, generator=g)
    protos[:, -1] = 0.0
    ys = torch.arange(K).repeat_interleave(n_per_class)
    x = protos[ys] + noise * torch.randn(len(ys), D, generator=g)
    src = 1 + torch.arange(n_poison) % (K - 1)
    xp = protos[src] + noise * torch.randn(n_poison, D, generator=g)
    xp[:, -1] = 1.0
    x = torch.cat([x, xp]).clamp(0, 1)
    x[: len(ys), -1] = 0.0
    y = torch.cat([ys, torch.zeros(n_poison, dtype=torch.long)])
    mask = torch.cat([torch.zeros(len(ys), dtype=torch.bool), torch.ones(n_poison, dtype=torch.bool)])
    info = DatasetInfo("planted", (1, 4, 4), K, (0.5,), (0.5,))
    return PixelModel(protos), ImageDataset(x.reshape(-1, 1, 4, 4), y, info), mask
