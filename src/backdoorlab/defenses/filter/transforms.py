"""Input transformations as purifiers (seed 000, "Input sanitization"; "Neural Trojans", Liu, Xie,
Srivastava, ICCD 2017; feature squeezing, Xu, Evans, Qi, NDSS 2018).

Threat model: a possibly trojaned model is used as is; every input is transformed before it is
classified, in the hope that the transformation breaks the trigger but not the content.

Transformations (each a ``Purifier``; ``purify(model, x)`` ignores the model):
  * ``Flip``:       x'[..., j] = x[..., W - 1 - j]                       (left-right flip)
  * ``ShrinkPad``:  resize to s = round(scale * H) x round(scale * W), pad back to H x W at an
                    offset (centre, or random per image)                 (padding after shrinking)
  * ``BitDepth``:   x' = round(x (2^b - 1)) / (2^b - 1)                  (colour-depth reduction)
  * ``MedianSmooth``: x'_ij = median of the k x k window around (i, j)   (spatial smoothing)

The seed's assumption: a backdoor is sensitive to perturbations of its trigger.  Flip and
shrink-pad move the trigger; bit depth and median smoothing barely change a saturated patch (the
feature-squeezing defences that the Trojaning attack evaded), which the benchmark shows.

Deviations: none in the maths.  Median smoothing pads by reflection at the borders; the random
shrink-pad offset is drawn from a generator seeded with ``seed``, so purification is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._validation import check_images, in_range, one_of, positive
from ...roles import Purifier


@dataclass(frozen=True, kw_only=True)
class Flip(Purifier):
    """Left-right flip of every input."""

    def purify(self, model: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "Flip input")
        return x.flip(-1)


@dataclass(frozen=True, kw_only=True)
class ShrinkPad(Purifier):
    """Shrink by ``scale`` (bilinear, anti-aliased) and zero-pad back to the input size.

    scale:    side of the shrunk image as a fraction of the input side.
    position: "center" or "random" (offset drawn per image from ``seed``).
    fill:     value of the padding.
    seed:     seed of the random offsets.
    """

    scale: float = 0.75
    position: str = "center"
    fill: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        in_range("ShrinkPad", "scale", self.scale, 0.0, 1.0, lo_open=True)
        one_of("ShrinkPad", "position", self.position, {"center", "random"})
        in_range("ShrinkPad", "fill", self.fill, 0.0, 1.0)
        if not isinstance(self.seed, int):
            raise ValueError(f"ShrinkPad.seed must be an int; got {self.seed!r}.")

    def purify(self, model: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "ShrinkPad input")
        N, C, H, W = x.shape
        h, w = max(1, round(self.scale * H)), max(1, round(self.scale * W))
        small = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        out = torch.full_like(x, self.fill)
        if self.position == "center":
            r, c = (H - h) // 2, (W - w) // 2
            out[:, :, r:r + h, c:c + w] = small
            return out
        g = torch.Generator().manual_seed(self.seed)
        rs = torch.randint(0, H - h + 1, (N,), generator=g).tolist()
        cs = torch.randint(0, W - w + 1, (N,), generator=g).tolist()
        for i, (r, c) in enumerate(zip(rs, cs)):
            out[i, :, r:r + h, c:c + w] = small[i]
        return out


@dataclass(frozen=True, kw_only=True)
class BitDepth(Purifier):
    """Colour-depth reduction to ``bits`` bits per channel."""

    bits: int = 3

    def __post_init__(self) -> None:
        positive("BitDepth", "bits", self.bits, integer=True)
        if self.bits > 16:
            raise ValueError(f"BitDepth.bits must be at most 16; got {self.bits!r}.")

    def purify(self, model: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "BitDepth input")
        levels = 2 ** self.bits - 1
        return torch.round(x * levels) / levels


@dataclass(frozen=True, kw_only=True)
class MedianSmooth(Purifier):
    """Median filter over ``size`` x ``size`` windows (reflection padding at the borders)."""

    size: int = 3

    def __post_init__(self) -> None:
        positive("MedianSmooth", "size", self.size, integer=True)
        if self.size % 2 == 0:
            raise ValueError(f"MedianSmooth.size must be an odd integer; got {self.size!r}.")

    def purify(self, model: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "MedianSmooth input")
        return median_filter(x, self.size)


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Per-channel k x k median of (N, C, H, W) images, reflection-padded (replicate when too small)."""
    p = k // 2
    if p == 0:
        return x.clone()
    N, C, H, W = x.shape
    mode = "reflect" if p < H and p < W else "replicate"
    xp = F.pad(x, (p, p, p, p), mode=mode)
    patches = F.unfold(xp.reshape(N * C, 1, H + 2 * p, W + 2 * p), k)  # (N*C, k*k, H*W)
    return patches.median(dim=1).values.reshape(N, C, H, W)
