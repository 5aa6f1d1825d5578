"""Input checks shared by every verb (DESIGN section 6).

Messages follow one template: ``"{Owner}.{param} must be {constraint}; got {value!r}."`` plus a
hint when a fix is likely.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def check_images(x: Any, owner: str = "images", *, channels: int | None = None,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
    """Check that ``x`` is a float (N, C, H, W) tensor in [0, 1] with no NaN; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}.")
    if x.dim() != 4:
        raise ValueError(
            f"{owner} must have shape (N, C, H, W); got {tuple(x.shape)!r}. "
            "Add a batch dimension with x.unsqueeze(0) for a single image."
        )
    if not torch.is_floating_point(x):
        raise TypeError(f"{owner} must be a float tensor with values in [0, 1]; got dtype {x.dtype}. "
                        "Convert uint8 images with x.float() / 255.")
    if x.numel() and torch.isnan(x).any():
        raise ValueError(f"{owner} must not contain NaN; got {int(torch.isnan(x).sum())} NaN values.")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{owner} must lie in [0, 1]; got min={lo:.4g}, max={hi:.4g}. "
                "Images are in pixel space: put normalization inside the model (models.Normalize)."
            )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{owner} must have {channels} channel(s); got shape {tuple(x.shape)!r}.")
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise ValueError(f"{owner} must be {size[0]}x{size[1]} pixels; got shape {tuple(x.shape)!r}.")
    return x


def check_labels(y: Any, n: int, num_classes: int | None = None, owner: str = "labels") -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != n:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{owner} must be an int64 tensor of shape ({n},); got {shape!r}.")
    if y.numel() and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        raise ValueError(
            f"{owner} must lie in [0, {num_classes}); got min={int(y.min())}, max={int(y.max())}. "
            "Check that the dataset and the model have the same classes."
        )
    return y.long()


def positive(owner: str, name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = value >= 0 if allow_zero else value > 0
    if not ok:
        what = "a non-negative" if allow_zero else "a positive"
        kind = "integer" if integer else "number"
        raise ValueError(f"{owner}.{name} must be {what} {kind}; got {value!r}.")


def in_range(owner: str, name: str, value: Any, lo: float, hi: float, *,
             lo_open: bool = False, hi_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{owner}.{name} must be in {left}{lo}, {hi}{right}; got {value!r}.")


def one_of(owner: str, name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {sorted(choices)!r}; got {value!r}.")
