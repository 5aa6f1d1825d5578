"""Trigger regions for verification: which pixels a trigger may overwrite, and their range.

    stamp(x, t) = x with x[S] := t,   t in [lo, hi]^|S|          (the overwrite semantics of
                                                                   Pham & Sun's tool, note 1.1)

A ``PatchTrigger``'s mask gives S (every channel of each masked pixel); ``patch_family`` lists
every position of an h x w patch (676 positions for 3x3 on 28x28), the "family of positions".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True, eq=False)
class TriggerRegion:
    """S = ``mask`` (bool, (C, H, W)); each trigger value lies in [``lo``, ``hi``]."""

    mask: torch.Tensor
    lo: float = 0.0
    hi: float = 1.0
    name: str = "region"

    def __post_init__(self) -> None:
        m = self.mask
        if not isinstance(m, torch.Tensor) or m.dim() != 3:
            raise ValueError("TriggerRegion.mask must be a (C, H, W) tensor; got "
                             f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__!r}.")
        object.__setattr__(self, "mask", m.detach().cpu().bool())
        if not int(self.mask.sum()):
            raise ValueError("TriggerRegion.mask must select at least one pixel; got an empty mask.")
        if not float(self.lo) <= float(self.hi):
            raise ValueError(f"TriggerRegion.lo must be <= hi; got lo={self.lo!r}, hi={self.hi!r}.")
        object.__setattr__(self, "lo", float(self.lo))
        object.__setattr__(self, "hi", float(self.hi))

    @property
    def size(self) -> int:
        return int(self.mask.sum())

    @property
    def indices(self) -> torch.Tensor:
        """Flat indices of S in a flattened (C, H, W) image, in row-major order."""
        return torch.nonzero(self.mask.reshape(-1)).flatten()

    def check(self, shape: tuple[int, ...]) -> None:
        if tuple(self.mask.shape) != tuple(shape):
            raise ValueError(f"TriggerRegion.mask must have the image shape {tuple(shape)!r}; "
                             f"got {tuple(self.mask.shape)!r}.")

    def stamp(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) with S overwritten by ``values`` (|S|,) (clamped to [lo, hi])."""
        out = x.clone().reshape(x.shape[0], -1)
        v = torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1).clamp(self.lo, self.hi)
        out[:, self.indices.to(x.device)] = v
        return out.reshape(x.shape)

    @classmethod
    def from_trigger(cls, trigger, lo: float = 0.0, hi: float = 1.0, name: str | None = None) -> "TriggerRegion":
        """The pixels a ``PatchTrigger`` touches (mask > 0), every channel, range [lo, hi]."""
        C = trigger.pattern.shape[0]
        m = (trigger.mask > 0).expand(C, *trigger.mask.shape[1:])
        if name is None:
            r0, c0, r1, c1 = trigger.bbox()
            name = f"{r1 - r0}x{c1 - c0}@{r0},{c0}"
        return cls(mask=m, lo=lo, hi=hi, name=name)

    @classmethod
    def patch(cls, shape: Sequence[int], size: int | tuple[int, int], row: int, col: int,
              lo: float = 0.0, hi: float = 1.0) -> "TriggerRegion":
        C, H, W = (int(s) for s in shape)
        h, w = (size, size) if isinstance(size, int) else size
        if row < 0 or col < 0 or row + h > H or col + w > W:
            raise ValueError(f"TriggerRegion.patch must fit in the {H}x{W} image; got {h}x{w} at ({row}, {col}).")
        m = torch.zeros(C, H, W, dtype=torch.bool)
        m[:, row:row + h, col:col + w] = True
        return cls(mask=m, lo=lo, hi=hi, name=f"{h}x{w}@{row},{col}")


def patch_family(shape: Sequence[int], size: int | tuple[int, int], lo: float = 0.0, hi: float = 1.0,
                 stride: int = 1) -> list[TriggerRegion]:
    """Every position of an h x w patch in a (C, H, W) image (top-left corners, row-major)."""
    C, H, W = (int(s) for s in shape)
    h, w = (size, size) if isinstance(size, int) else size
    if h > H or w > W or h < 1 or w < 1:
        raise ValueError(f"patch_family.size must fit in the {H}x{W} image; got {h}x{w}.")
    return [TriggerRegion.patch(shape, (h, w), r, c, lo, hi)
            for r in range(0, H - h + 1, stride) for c in range(0, W - w + 1, stride)]
