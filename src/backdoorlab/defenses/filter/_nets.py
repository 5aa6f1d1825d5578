"""Small image-to-image networks and their training loop, shared by the autoencoder purifier and
Februus' inpainter (private: no I/O, explicit generators, progress through a callback)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...training import init_weights, minibatch_loop


class ConvAutoencoder(nn.Module):
    """conv 32 -> conv 64 /2 -> conv ``code`` /2 (the bottleneck) -> up, conv 64 -> conv 32 -> up,
    conv C, sigmoid.
    Works for any H x W (decoder upsamples to the encoder's sizes)."""

    def __init__(self, channels: int, code: int):
        super().__init__()
        self.e1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.e2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.e3 = nn.Conv2d(64, code, 3, stride=2, padding=1)
        self.d3 = nn.Conv2d(code, 64, 3, padding=1)
        self.d2 = nn.Conv2d(64, 32, 3, padding=1)
        self.d1 = nn.Conv2d(32, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = F.relu(self.e1(x))
        h2 = F.relu(self.e2(h1))
        z = F.relu(self.e3(h2))
        u = F.relu(self.d3(F.interpolate(z, size=h2.shape[-2:], mode="nearest")))
        u = F.relu(self.d2(u))                                        # at half resolution (cheap)
        return torch.sigmoid(self.d1(F.interpolate(u, size=x.shape[-2:], mode="bilinear", align_corners=False)))


class Inpainter(nn.Module):
    """A small U-Net for masked images: input (x * (1 - m), m), output a full image (linear output
    layer; callers clamp to [0, 1]).  Dilated convolutions at half resolution give it context several
    pixels around the hole.  No sigmoid: on sparse images (MNIST is ~80% black) a sigmoid output
    trained towards 0 saturates and the network dies (it returned exactly 0 everywhere)."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        w = width
        self.e1 = nn.Conv2d(channels + 1, w, 3, padding=1)
        self.e2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.m1 = nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2)
        self.m2 = nn.Conv2d(2 * w, 2 * w, 3, padding=4, dilation=4)
        self.d2 = nn.Conv2d(2 * w, w, 3, padding=1)
        self.d1 = nn.Conv2d(2 * w, w, 3, padding=1)
        self.out = nn.Conv2d(w, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h1 = F.relu(self.e1(torch.cat([x * (1 - mask), mask], 1)))
        h2 = F.relu(self.e2(h1))
        h = F.relu(self.m2(F.relu(self.m1(h2)))) + h2
        u = F.interpolate(F.relu(self.d2(h)), size=h1.shape[-2:], mode="bilinear", align_corners=False)
        u = F.relu(self.d1(torch.cat([u, h1], 1)))
        return self.out(u)


def train_net(net: nn.Module, n: int, loss_of_batch: Callable[[torch.Tensor], torch.Tensor], *,
              epochs: int, batch_size: int, lr: float, generator: torch.Generator,
              progress: Callable[[int, int], None] | None = None) -> float:
    """Adam on ``loss_of_batch(indices)`` over shuffled index batches of ``range(n)``, cosine
    learning rate; returns the last loss.  ``net`` is trained in place and left in eval mode."""
    init_weights(net, generator)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    _, last = minibatch_loop(net, opt, n, loss_of_batch, epochs=epochs, batch_size=batch_size, cosine=True,
                             generator=generator, progress=progress)
    for p in net.parameters():
        p.requires_grad_(False)
    return last
