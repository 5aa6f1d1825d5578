"""Step 4 of every training-set sanitizer: retrain a fresh model on the samples that were kept.

``sanitize_and_retrain(sanitizer, model, dataset, ...)`` runs the seed's four steps on a model
already trained on all the data (step 1): scan (steps 2-3), drop the flagged samples, and train
a freshly initialised copy of the same architecture on the rest (step 4).  The input model is
never modified.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._torch import device_of
from ...data import ImageDataset, as_tensors
from ...roles import Progress, Sanitizer
from ...types import SampleScores

__all__ = ["Sanitized", "kept_subset", "retrain", "sanitize_and_retrain"]


@dataclass(frozen=True, kw_only=True)
class Sanitized:
    """Result of ``sanitize_and_retrain``: the scan, the kept indices and the retrained model."""

    scores: SampleScores
    kept: torch.Tensor
    model: torch.nn.Module


def kept_subset(dataset, flagged: torch.Tensor) -> tuple[ImageDataset, torch.Tensor]:
    """(dataset without the flagged samples, indices kept)."""
    x, y = as_tensors(dataset)
    flagged = torch.as_tensor(flagged, dtype=torch.bool)
    if flagged.shape != y.shape:
        raise ValueError(f"flagged must have one entry per sample ({len(y)}); got shape {tuple(flagged.shape)}.")
    keep = torch.nonzero(~flagged).flatten()
    if len(keep) == 0:
        raise ValueError("every sample was flagged; nothing is left to retrain on.")
    return ImageDataset(x[keep], y[keep], getattr(dataset, "info", None)), keep


def retrain(model: torch.nn.Module, dataset, flagged: torch.Tensor, *, epochs: int, batch_size: int = 128,
            lr: float = 0.01, optimizer: str = "sgd", generator: torch.Generator | None = None,
            progress: Progress = None) -> torch.nn.Module:
    """A freshly initialised model of ``model``'s architecture, trained on the unflagged samples."""
    from ...models import ARCHITECTURES, build
    from ...training import fit, init_weights

    arch = getattr(model, "arch", "")
    if arch not in ARCHITECTURES:
        raise ValueError(f"retrain needs a model built by backdoorlab.models.build; got arch {arch!r}.")
    data, _ = kept_subset(dataset, flagged)
    fresh = init_weights(build(arch, **model.arch_kwargs), generator).to(device_of(model))
    fit(fresh, data, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
        generator=generator, progress=progress)
    return fresh.eval()


def sanitize_and_retrain(sanitizer: Sanitizer, model: torch.nn.Module, dataset, *, epochs: int,
                         batch_size: int = 128, lr: float = 0.01, optimizer: str = "sgd",
                         generator: torch.Generator | None = None, progress: Progress = None) -> Sanitized:
    """Steps 2-4 of the seed: scan ``dataset`` with ``model`` (trained on all of it), remove the
    flagged samples, retrain from scratch on the rest."""
    scores = sanitizer.scan(model, dataset)
    new = retrain(model, dataset, scores.flagged, epochs=epochs, batch_size=batch_size, lr=lr,
                  optimizer=optimizer, generator=generator, progress=progress)
    return Sanitized(scores=scores, kept=torch.nonzero(~scores.flagged).flatten(), model=new)
