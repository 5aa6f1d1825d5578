"""In-memory image datasets and the lazy poisoned view (DESIGN sections 3 and 9).

A dataset is anything with ``__len__`` and ``__getitem__ -> (x, y)``.  ``ImageDataset`` keeps the
whole split as two tensors, which is what makes training and every batched defense fast;
``as_tensors`` turns any dataset into ``(x, y)`` (fast for ours, by stacking for others).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .._validation import check_images, check_labels


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data: name, shape, classes, normalization."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "mean": list(self.mean), "std": list(self.std), "class_names": list(self.class_names)}


class ImageDataset:
    """A split held as ``x`` (N, C, H, W) float32 in [0,1] and ``y`` (N,) int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo | None = None,
                 name: str = "images"):
        check_images(x, f"{name}.x")
        check_labels(y, len(x), info.num_classes if info else None, f"{name}.y")
        self.x = x.float()
        self.y = y.long()
        self.info = info

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "ImageDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.x[idx], self.y[idx], self.info)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes if self.info else int(self.y.max()) + 1


class PoisonedDataset:
    """Lazy poisoned view: samples at ``indices`` are stamped with ``trigger`` and relabelled.

    ``relabel[y]`` is the new label of a poisoned sample of true class ``y`` (``None`` keeps the
    label, as clean-label attacks do).  ``trigger`` may be any ``x -> x'`` callable on (N, C, H, W)
    batches; ``replace`` instead gives the poisoned images outright (Poison Frogs).  The base
    dataset is never copied or modified; ground truth stays in ``indices``.
    """

    def __init__(self, base, indices: torch.Tensor | Sequence[int], trigger: Callable | None = None,
                 relabel: Sequence[int] | torch.Tensor | None = None, *, replace: torch.Tensor | None = None):
        self.base = base
        self.indices = torch.as_tensor(indices, dtype=torch.long).sort().values
        if (trigger is None) == (replace is None):
            raise ValueError("PoisonedDataset needs exactly one of trigger or replace.")
        if replace is not None and len(replace) != len(self.indices):
            raise ValueError(f"PoisonedDataset.replace must hold one image per index ({len(self.indices)}); "
                             f"got {len(replace)}.")
        if replace is not None:
            order = torch.as_tensor(indices, dtype=torch.long).argsort()
            replace = replace[order]
        self.trigger = trigger
        self.replace = replace
        self.relabel = None if relabel is None else torch.as_tensor(relabel, dtype=torch.long)
        self._pos = {int(i): k for k, i in enumerate(self.indices)}
        self.info = getattr(base, "info", None)

    def __len__(self) -> int:
        return len(self.base)

    def _label(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.relabel is None else self.relabel[y]

    def __getitem__(self, i: int):
        x, y = self.base[i]
        k = self._pos.get(int(i))
        if k is None:
            return x, y
        x = self.replace[k] if self.replace is not None else self.trigger(x.unsqueeze(0))[0]
        return x, self._label(torch.as_tensor(y))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = as_tensors(self.base)
        x, y = x.clone(), y.clone()
        if len(self.indices):
            idx = self.indices
            x[idx] = self.replace if self.replace is not None else self.trigger(x[idx])
            y[idx] = self._label(y[idx])
        return x, y

    @property
    def poison_mask(self) -> torch.Tensor:
        m = torch.zeros(len(self), dtype=torch.bool)
        m[self.indices] = True
        return m


def as_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` tensors of any dataset (zero-copy for ImageDataset)."""
    if hasattr(dataset, "tensors") and callable(dataset.tensors):
        return dataset.tensors()
    if isinstance(dataset, tuple) and len(dataset) == 2:
        return dataset
    if len(dataset) == 0:
        raise ValueError("dataset must not be empty.")
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack([torch.as_tensor(x) for x in xs]).float(), torch.as_tensor(
        [int(y) for y in ys], dtype=torch.long)


def clean_subset(dataset, *, per_class: int | None = None, fraction: float | None = None,
                 generator: torch.Generator | None = None) -> ImageDataset:
    """The defender's small clean set: ``per_class`` samples of each class, or a stratified
    ``fraction`` of the dataset, drawn with ``generator``."""
    if (per_class is None) == (fraction is None):
        raise ValueError("clean_subset needs exactly one of per_class or fraction.")
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise ValueError(f"clean_subset.per_class must be a positive int; got {per_class!r}.")
    if fraction is not None and not (0 < fraction <= 1):
        raise ValueError(f"clean_subset.fraction must be in (0, 1]; got {fraction!r}.")
    x, y = as_tensors(dataset)
    chosen = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n = per_class if per_class is not None else max(1, round(fraction * len(idx)))
        chosen.append(idx[:n])
    sel = torch.cat(chosen).sort().values
    return ImageDataset(x[sel], y[sel], getattr(dataset, "info", None))
