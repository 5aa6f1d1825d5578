"""Triggers: pure ``x -> x'`` maps shared by attacks, detectors and metrics (DESIGN section 4).

``PatchTrigger(mask, pattern)`` is the Neural Cleanse trigger form

    x' = (1 - m) * x + m * Δ                                                    (NC eq. 1)

with ``m`` in [0,1]^(1 or C, H, W) and ``Δ`` in [0,1]^(C, H, W).  BadNets plants one, Neural
Cleanse recovers one of the same type, metrics compare them.  ``BlendTrigger(pattern, alpha)`` is
the blended-injection trigger of Chen et al. (2017): x' = (1 - α) x + α Δ over the whole image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

Position = str | tuple[int, int]
CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


class Trigger:
    """Base: a deterministic map from images in [0,1] to stamped images in [0,1]."""

    kind: str = "trigger"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x)

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def image(self) -> torch.Tensor:
        """A (C, H, W) picture of the trigger for PNG export."""
        raise NotImplementedError


def _anchor(position: Position, h: int, w: int, H: int, W: int, margin: int) -> tuple[int, int]:
    if isinstance(position, tuple):
        r, c = int(position[0]), int(position[1])
    elif position == "bottom-right":
        r, c = H - margin - h, W - margin - w
    elif position == "bottom-left":
        r, c = H - margin - h, margin
    elif position == "top-right":
        r, c = margin, W - margin - w
    elif position == "top-left":
        r, c = margin, margin
    elif position == "center":
        r, c = (H - h) // 2, (W - w) // 2
    else:
        raise ValueError(f"PatchTrigger.position must be one of {CORNERS} or (row, col); got {position!r}.")
    if r < 0 or c < 0 or r + h > H or c + w > W:
        raise ValueError(
            f"PatchTrigger.position must keep the {h}x{w} patch inside the {H}x{W} image; "
            f"got top-left corner ({r}, {c})."
        )
    return r, c


@dataclass(frozen=True, eq=False)
class PatchTrigger(Trigger):
    """x' = (1 - mask) * x + mask * pattern.  ``mask``: (1 or C, H, W); ``pattern``: (C, H, W)."""

    mask: torch.Tensor
    pattern: torch.Tensor
    kind = "patch"

    def __post_init__(self) -> None:
        m, p = self.mask, self.pattern
        if not isinstance(m, torch.Tensor) or not isinstance(p, torch.Tensor):
            raise TypeError("PatchTrigger.mask and PatchTrigger.pattern must be torch.Tensors.")
        if p.dim() != 3 or m.dim() != 3 or m.shape[1:] != p.shape[1:] or m.shape[0] not in (1, p.shape[0]):
            raise ValueError(
                "PatchTrigger.mask must have shape (1 or C, H, W) matching pattern (C, H, W); "
                f"got mask {tuple(m.shape)!r}, pattern {tuple(p.shape)!r}."
            )
        for name, t in (("mask", m), ("pattern", p)):
            if torch.isnan(t).any() or float(t.min()) < 0 or float(t.max()) > 1:
                raise ValueError(f"PatchTrigger.{name} must lie in [0, 1] with no NaN; "
                                 f"got min={float(t.min()):.4g}, max={float(t.max()):.4g}.")
        object.__setattr__(self, "mask", m.detach().float().cpu())
        object.__setattr__(self, "pattern", p.detach().float().cpu())

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pattern.shape)  # type: ignore[return-value]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3:] != self.pattern.shape:
            raise ValueError(f"PatchTrigger.apply expects images of shape (N, {', '.join(map(str, self.shape))}); "
                             f"got {tuple(x.shape)!r}.")
        m = self.mask.to(device=x.device, dtype=x.dtype)
        p = self.pattern.to(device=x.device, dtype=x.dtype)
        return (1 - m) * x + m * p

    def l1(self) -> float:
        """L1 norm of the mask (Neural Cleanse's trigger size)."""
        return float(self.mask.abs().sum())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mask": self.mask, "pattern": self.pattern}

    def image(self) -> torch.Tensor:
        return (self.mask * self.pattern).expand_as(self.pattern).clone()

    def bbox(self) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1) of the mask's support, end-exclusive."""
        support = self.mask.amax(0) > 0
        rows, cols = torch.nonzero(support, as_tuple=True)
        if rows.numel() == 0:
            return (0, 0, 0, 0)
        return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_patch(cls, patch: torch.Tensor, shape: Sequence[int], position: Position = "bottom-right",
                   *, patch_mask: torch.Tensor | None = None, margin: int = 1) -> "PatchTrigger":
        """Place a (C, h, w) ``patch`` into an image of ``shape`` (C, H, W) at ``position``."""
        C, H, W = (int(s) for s in shape)
        if patch.dim() == 2:
            patch = patch.unsqueeze(0)
        if patch.shape[0] not in (1, C):
            raise ValueError(f"PatchTrigger patch must have 1 or {C} channels; got {tuple(patch.shape)!r}.")
        h, w = patch.shape[1:]
        r, c = _anchor(position, h, w, H, W, margin)
        mask = torch.zeros(1, H, W)
        pattern = torch.zeros(C, H, W)
        pm = torch.ones(1, h, w) if patch_mask is None else patch_mask.reshape(1, h, w).float()
        mask[:, r:r + h, c:c + w] = pm
        pattern[:, r:r + h, c:c + w] = patch.float().expand(C, h, w)
        return cls(mask=mask, pattern=pattern)

    @classmethod
    def square(cls, shape: Sequence[int], size: int = 3, position: Position = "bottom-right",
               color: float | Sequence[float] = 1.0, margin: int = 1) -> "PatchTrigger":
        """A solid ``size`` x ``size`` square of ``color`` (one value or one per channel)."""
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"PatchTrigger.size must be a positive int; got {size!r}.")
        C = int(shape[0])
        col = torch.as_tensor(color, dtype=torch.float32).reshape(-1, 1, 1)
        return cls.from_patch(col.expand(C if col.shape[0] == 1 else col.shape[0], size, size),
                              shape, position, margin=margin)

    @classmethod
    def single_pixel(cls, shape: Sequence[int], position: Position = "bottom-right",
                     value: float = 1.0, margin: int = 1) -> "PatchTrigger":
        """BadNets' single bright pixel (Gu et al. 2017, Fig. 3), near the bottom-right corner."""
        return cls.square(shape, 1, position, value, margin)

    @classmethod
    def badnets_pattern(cls, shape: Sequence[int], position: Position = "bottom-right",
                        margin: int = 1) -> "PatchTrigger":
        """BadNets' pattern trigger: a 3x3 checkerboard of bright pixels, bottom-right by default."""
        patch = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
        return cls.from_patch(patch, shape, position, margin=margin)

    @classmethod
    def from_png(cls, path, shape: Sequence[int], position: Position = "bottom-right",
                 size: int | None = None, margin: int = 1) -> "PatchTrigger":
        """A trigger from a PNG (alpha channel, if any, becomes the mask), resized to ``size``."""
        from .io import read_png

        img = read_png(path)  # (C or C+1, h, w) in [0,1]
        C = int(shape[0])
        alpha = None
        if img.shape[0] in (2, 4):
            img, alpha = img[:-1], img[-1:]
        if img.shape[0] != C:
            img = img.mean(0, keepdim=True) if C == 1 else img.expand(C, *img.shape[1:])
        if size is not None:
            img = F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            if alpha is not None:
                alpha = F.interpolate(alpha[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        return cls.from_patch(img.clamp(0, 1), shape, position,
                              patch_mask=None if alpha is None else alpha.clamp(0, 1), margin=margin)

    # ---- variants (exercise 1: trigger sensitivity) -------------------------------------------
    def shifted(self, dr: int, dc: int) -> "PatchTrigger":
        """The same trigger moved by (dr, dc) pixels; parts moved outside the image are dropped."""
        def move(t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(t)
            H, W = t.shape[1:]
            src_r, dst_r = (slice(0, H - dr), slice(dr, H)) if dr >= 0 else (slice(-dr, H), slice(0, H + dr))
            src_c, dst_c = (slice(0, W - dc), slice(dc, W)) if dc >= 0 else (slice(-dc, W), slice(0, W + dc))
            out[:, dst_r, dst_c] = t[:, src_r, src_c]
            return out
        return PatchTrigger(mask=move(self.mask), pattern=move(self.pattern))

    def scaled(self, factor: float) -> "PatchTrigger":
        """The trigger's patch resized by ``factor`` (nearest neighbour), anchored at its bottom-right."""
        r0, c0, r1, c1 = self.bbox()
        h, w = r1 - r0, c1 - c0
        nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
        H, W = self.shape[1:]
        nh, nw = min(nh, H), min(nw, W)
        m = F.interpolate(self.mask[None, :, r0:r1, c0:c1], size=(nh, nw), mode="nearest")[0]
        p = F.interpolate(self.pattern[None, :, r0:r1, c0:c1], size=(nh, nw), mode="nearest")[0]
        rr, cc = max(0, r1 - nh), max(0, c1 - nw)
        mask = torch.zeros_like(self.mask)
        pattern = torch.zeros_like(self.pattern)
        mask[:, rr:rr + nh, cc:cc + nw] = m
        pattern[:, rr:rr + nh, cc:cc + nw] = p
        return PatchTrigger(mask=mask, pattern=pattern)


@dataclass(frozen=True, eq=False)
class BlendTrigger(Trigger):
    """Blended injection (Chen et al. 2017): x' = (1 - alpha) * x + alpha * pattern."""

    pattern: torch.Tensor
    alpha: float = 0.2
    kind = "blend"

    def __post_init__(self) -> None:
        p = self.pattern
        if not isinstance(p, torch.Tensor) or p.dim() != 3:
            raise ValueError(f"BlendTrigger.pattern must be a (C, H, W) tensor; got "
                             f"{tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__!r}.")
        if torch.isnan(p).any() or float(p.min()) < 0 or float(p.max()) > 1:
            raise ValueError("BlendTrigger.pattern must lie in [0, 1] with no NaN.")
        if not (0 < float(self.alpha) <= 1):
            raise ValueError(f"BlendTrigger.alpha must be in (0, 1]; got {self.alpha!r}.")
        object.__setattr__(self, "pattern", p.detach().float().cpu())
        object.__setattr__(self, "alpha", float(self.alpha))

    @classmethod
    def random_noise(cls, shape: Sequence[int], alpha: float = 0.2,
                     generator: torch.Generator | None = None) -> "BlendTrigger":
        """Uniform random-noise key pattern (Chen et al.'s 'random pattern')."""
        return cls(pattern=torch.rand(tuple(int(s) for s in shape), generator=generator), alpha=alpha)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pattern.shape)  # type: ignore[return-value]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3:] != self.pattern.shape:
            raise ValueError(f"BlendTrigger.apply expects images of shape (N, {', '.join(map(str, self.shape))}); "
                             f"got {tuple(x.shape)!r}.")
        p = self.pattern.to(device=x.device, dtype=x.dtype)
        return (1 - self.alpha) * x + self.alpha * p

    def as_patch(self) -> PatchTrigger:
        """The same map as a full-image PatchTrigger with constant mask alpha."""
        return PatchTrigger(mask=torch.full((1, *self.pattern.shape[1:]), self.alpha), pattern=self.pattern)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern}

    def params(self) -> dict:
        return {"alpha": self.alpha}

    def image(self) -> torch.Tensor:
        return self.pattern.clone()


TRIGGER_KINDS: dict[str, type[Trigger]] = {"patch": PatchTrigger, "blend": BlendTrigger}


def trigger_from_tensors(kind: str, tensors: dict[str, torch.Tensor], params: dict) -> Trigger:
    """Rebuild a trigger saved by ``io.save_ground_truth`` (kind + tensors + params)."""
    if kind not in TRIGGER_KINDS:
        from . import attacks  # noqa: F401  (registers the attack-specific trigger kinds)
    if kind not in TRIGGER_KINDS:
        raise ValueError(f"trigger kind must be one of {sorted(TRIGGER_KINDS)}; got {kind!r}.")
    return TRIGGER_KINDS[kind](**tensors, **params)


def parse_patch_spec(spec: str, shape: Sequence[int]) -> PatchTrigger:
    """Parse ``"3x3@bottom-right"`` or ``"4x4@20,20"`` into a white square PatchTrigger."""
    try:
        size_part, _, pos_part = spec.partition("@")
        h, w = (int(v) for v in size_part.lower().split("x"))
        pos: Position = pos_part or "bottom-right"
        if pos and pos[0].isdigit():
            r, c = (int(v) for v in pos.split(","))
            pos = (r, c)
    except ValueError:
        raise ValueError(f"patch spec must look like '3x3@bottom-right' or '3x3@20,20'; got {spec!r}.") from None
    if h != w:
        return PatchTrigger.from_patch(torch.ones(int(shape[0]), h, w), shape, pos)
    return PatchTrigger.square(shape, h, pos)
