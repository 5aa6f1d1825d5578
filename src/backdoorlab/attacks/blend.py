"""Blended injection (Chen, Liu, Li, Lu, Song, "Targeted Backdoor Attacks on Deep Learning Systems
Using Data Poisoning", 2017) and two invisible, low-magnitude variants.

Threat model: the attacker adds (or replaces) a fraction of the training set with stamped,
relabelled samples; the victim trains normally (as BadNets, seed 001).

Triggers:
  * blended (Chen et al. eq. 1):  x' = (1 - α) x + α k,  with the key pattern k a uniform random
    noise image ("random pattern") or any image ("Hello Kitty" in the paper; ``pattern="image"``);
  * additive, invisible:  x' = clip(x + δ, 0, 1),  ||δ||_∞ ≤ ε  (``AdditiveTrigger``; δ = ±ε
    random signs by default, a "small-L∞ additive pattern");
  * warping, invisible (WaNet, Nguyen & Tran 2021, eq. 3-5):  x' = W(x, M + s·P/H), a smooth
    random displacement field P upsampled from a k x k grid and normalised so max |P| = 1
    (``WarpTrigger``).

Deviations:
  * As in ``BadNets`` the chosen samples are replaced in place, so ``rate`` is the poisoned fraction.
  * WaNet's "noise mode" (extra samples with random warps kept at their true label) and its
    training schedule are not reproduced; ``WarpTrigger`` is only the warping trigger, trained on
    like any other trigger.
  * WaNet normalises the random k x k field by its MEAN absolute value; we normalise by its MAX, so
    ``s`` bounds the largest displacement (s/H of the image side) instead of the average one.  For
    the same ``s`` our warps are therefore weaker than WaNet's (by the field's max/mean ratio).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .._validation import in_range, one_of, positive
from ..triggers import TRIGGER_KINDS, BlendTrigger, Trigger
from ..types import Poisoned
from ..roles import Attack
from .badnets import BadNets


@dataclass(frozen=True, eq=False)
class AdditiveTrigger(Trigger):
    """x' = clip(x + delta, 0, 1); ``delta`` (C, H, W) in [-1, 1], usually with ||delta||_∞ ≤ 8/255."""

    delta: torch.Tensor
    kind = "additive"

    def __post_init__(self) -> None:
        d = self.delta
        if not isinstance(d, torch.Tensor) or d.dim() != 3:
            raise ValueError("AdditiveTrigger.delta must be a (C, H, W) tensor; got "
                             f"{tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__!r}.")
        if torch.isnan(d).any() or float(d.abs().max()) > 1:
            raise ValueError(f"AdditiveTrigger.delta must lie in [-1, 1] with no NaN; got max |delta|="
                             f"{float(d.abs().max()):.4g}.")
        object.__setattr__(self, "delta", d.detach().float().cpu())

    @classmethod
    def random_signs(cls, shape: Sequence[int], epsilon: float = 8 / 255,
                     generator: torch.Generator | None = None) -> "AdditiveTrigger":
        in_range("AdditiveTrigger", "epsilon", epsilon, 0.0, 1.0, lo_open=True)
        signs = torch.randint(0, 2, tuple(int(s) for s in shape), generator=generator).float() * 2 - 1
        return cls(delta=signs * epsilon)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.delta.shape)  # type: ignore[return-value]

    @property
    def epsilon(self) -> float:
        return float(self.delta.abs().max())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3:] != self.delta.shape:
            raise ValueError(f"AdditiveTrigger.apply expects images of shape (N, {', '.join(map(str, self.shape))}); "
                             f"got {tuple(x.shape)!r}.")
        return (x + self.delta.to(device=x.device, dtype=x.dtype)).clamp(0, 1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta}

    def image(self) -> torch.Tensor:
        e = max(self.epsilon, 1e-12)
        return (self.delta / (2 * e) + 0.5).clamp(0, 1)


@dataclass(frozen=True, eq=False)
class WarpTrigger(Trigger):
    """WaNet warp: x' = grid_sample(x, identity + strength * flow / H); ``flow`` (2, H, W) in [-1, 1]."""

    flow: torch.Tensor
    strength: float = 0.5
    kind = "warp"

    def __post_init__(self) -> None:
        f = self.flow
        if not isinstance(f, torch.Tensor) or f.dim() != 3 or f.shape[0] != 2:
            raise ValueError("WarpTrigger.flow must be a (2, H, W) tensor; got "
                             f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__!r}.")
        if torch.isnan(f).any() or float(f.abs().max()) > 1:
            raise ValueError("WarpTrigger.flow must lie in [-1, 1] with no NaN.")
        positive("WarpTrigger", "strength", self.strength)
        object.__setattr__(self, "flow", f.detach().float().cpu())
        object.__setattr__(self, "strength", float(self.strength))

    @classmethod
    def random(cls, shape: Sequence[int], grid: int = 4, strength: float = 0.5,
               generator: torch.Generator | None = None) -> "WarpTrigger":
        """WaNet eq. 5: uniform k x k field in [-1, 1], normalised by its mean |.|, upsampled bicubically."""
        positive("WarpTrigger", "grid", grid, integer=True)
        H, W = int(shape[1]), int(shape[2])
        ins = torch.rand(1, 2, grid, grid, generator=generator) * 2 - 1
        ins = ins / ins.abs().mean()
        flow = F.interpolate(ins, size=(H, W), mode="bicubic", align_corners=True)[0]
        return cls(flow=(flow / flow.abs().max()).clamp(-1, 1), strength=strength)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ys = torch.linspace(-1, 1, H, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, W, device=x.device, dtype=x.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        ident = torch.stack([gx, gy], -1)                              # (H, W, 2) as grid_sample wants
        flow = self.flow.to(device=x.device, dtype=x.dtype).permute(1, 2, 0)
        return (ident + self.strength * flow / H).clamp(-1, 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.flow.shape[1:]:
            raise ValueError(f"WarpTrigger.apply expects {self.flow.shape[1]}x{self.flow.shape[2]} images; "
                             f"got {tuple(x.shape)!r}.")
        grid = self._grid(x).unsqueeze(0).expand(len(x), -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp(0, 1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"flow": self.flow}

    def params(self) -> dict:
        return {"strength": self.strength}

    def image(self) -> torch.Tensor:
        return torch.cat([self.flow / 2 + 0.5, torch.full_like(self.flow[:1], 0.5)]).clamp(0, 1)


TRIGGER_KINDS.setdefault(AdditiveTrigger.kind, AdditiveTrigger)
TRIGGER_KINDS.setdefault(WarpTrigger.kind, WarpTrigger)

PATTERNS = ("noise", "image", "additive", "warp")


@dataclass(frozen=True, kw_only=True)
class Blend(Attack):
    """Blended-injection data poisoning (Chen et al. 2017) and its invisible variants.

    pattern: ``"noise"`` (uniform random key pattern k), ``"image"`` (the key image ``image``),
             ``"additive"`` (±ε random-sign additive trigger) or ``"warp"`` (WaNet warping).
    alpha:   blend ratio α of eq. 1 (paper: 0.2 for training poisons).
    image:   (C, H, W) key image in [0, 1] for ``pattern="image"`` (resized to the data).
    epsilon: L∞ size ε of the additive trigger.  strength / grid: WaNet's s and k.
    trigger: give a ready ``Trigger`` instead (overrides ``pattern``).
    target:  all-to-one target label.  rate: poisoned fraction of the training set.
    """

    pattern: str = "noise"
    alpha: float = 0.2
    image: torch.Tensor | None = None
    epsilon: float = 8 / 255
    strength: float = 0.5
    grid: int = 4
    trigger: Trigger | None = None
    target: int = 0
    rate: float = 0.1

    def __post_init__(self) -> None:
        one_of("Blend", "pattern", self.pattern, set(PATTERNS))
        in_range("Blend", "alpha", self.alpha, 0.0, 1.0, lo_open=True)
        in_range("Blend", "epsilon", self.epsilon, 0.0, 1.0, lo_open=True)
        positive("Blend", "strength", self.strength)
        positive("Blend", "grid", self.grid, integer=True)
        in_range("Blend", "rate", self.rate, 0.0, 1.0, lo_open=True)
        if not isinstance(self.target, int) or isinstance(self.target, bool) or self.target < 0:
            raise ValueError(f"Blend.target must be a non-negative int; got {self.target!r}.")
        if self.trigger is not None and not isinstance(self.trigger, Trigger):
            raise TypeError(f"Blend.trigger must be a Trigger; got {type(self.trigger).__name__}.")
        if self.pattern == "image" and self.trigger is None and self.image is None:
            raise ValueError("Blend.image must be a (C, H, W) tensor when pattern='image'; got None.")

    def make_trigger(self, shape: Sequence[int], generator: torch.Generator | None = None) -> Trigger:
        """The trigger this attack stamps on images of ``shape`` (drawn with ``generator``)."""
        if self.trigger is not None:
            return self.trigger
        if self.pattern == "noise":
            return BlendTrigger.random_noise(shape, self.alpha, generator)
        if self.pattern == "image":
            img = self.image.float()
            if img.dim() == 2:
                img = img.unsqueeze(0)
            C = int(shape[0])
            if img.shape[0] != C:
                img = img.mean(0, keepdim=True).expand(C, -1, -1) if img.shape[0] != 1 else img.expand(C, -1, -1)
            img = F.interpolate(img[None], size=tuple(int(s) for s in shape[1:]), mode="bilinear",
                                align_corners=False)[0]
            return BlendTrigger(pattern=img.clamp(0, 1).contiguous(), alpha=self.alpha)
        if self.pattern == "additive":
            return AdditiveTrigger.random_signs(shape, self.epsilon, generator)
        return WarpTrigger.random(shape, self.grid, self.strength, generator)

    def poison(self, dataset, *, model=None, generator: torch.Generator | None = None) -> Poisoned:
        x0, _ = dataset[0]
        trig = self.make_trigger(tuple(x0.shape), generator)
        return BadNets(trigger=trig, target=self.target, rate=self.rate).poison(dataset, generator=generator)
