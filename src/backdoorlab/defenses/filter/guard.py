"""``Guard``: one generic calibrated wrapper that puts any ``InputFilter`` in front of a model.

Calibration (DESIGN section 4): the threshold is the (1 - fpr) empirical quantile of the filter's
scores on clean inputs, so at most a fraction ``fpr`` of clean inputs is withheld; ``guard(x)``
returns the model's predictions with flagged inputs withheld (prediction -1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._stats import threshold_at_fpr
from ..._torch import predict
from ..._validation import check_images, in_range
from ...roles import InputFilter
from ...types import Screened

WITHHELD = -1


@dataclass(frozen=True, eq=False)
class Guard:
    """A filter, the model it guards, a clean overlay/reference pool, and a calibrated threshold."""

    filter: InputFilter
    model: torch.nn.Module
    clean_pool: torch.Tensor
    threshold: float
    fpr: float

    @classmethod
    def calibrate(cls, filter: InputFilter, model: torch.nn.Module, clean, *, fpr: float = 0.01,
                  pool_size: int | None = None) -> "Guard":
        """Score held-out clean inputs and set the threshold at their (1 - fpr) quantile.

        ``clean`` is a dataset or an (N, C, H, W) tensor; the first ``pool_size`` images (default:
        half) are the filter's clean pool (e.g. STRIP's overlays), the rest calibrate."""
        from ...data import as_tensors

        in_range("Guard", "fpr", fpr, 0.0, 1.0, lo_open=True, hi_open=True)
        x = clean if isinstance(clean, torch.Tensor) else as_tensors(clean)[0]
        check_images(x, "Guard.calibrate clean")
        if len(x) < 4:
            raise ValueError(f"Guard.calibrate needs at least 4 clean images; got {len(x)}.")
        k = pool_size if pool_size is not None else len(x) // 2
        pool, held = x[:k], x[k:]
        scores = filter.score(model, held, pool)
        return cls(filter=filter, model=model, clean_pool=pool, threshold=threshold_at_fpr(scores, fpr), fpr=fpr)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, "Guard input")
        return self.filter.score(self.model, x, self.clean_pool)

    def __call__(self, x: torch.Tensor) -> Screened:
        s = self.scores(x)
        flagged = s > self.threshold
        pred = predict(self.model, x)
        pred = torch.where(flagged.to(pred.device), torch.full_like(pred, WITHHELD), pred)
        return Screened(predictions=pred, scores=s, flagged=flagged)
