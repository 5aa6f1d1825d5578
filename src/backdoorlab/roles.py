"""Role base classes (DESIGN section 4): one role, one verb, one frozen result.

Algorithms are ``@dataclass(frozen=True, kw_only=True)`` subclasses holding only
hyper-parameters; their constructor signature is their config schema.  The bases only fix the
verb's signature and carry the human-readable ``name`` used by registries and reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .types import Implanted, Poisoned, Repaired, SampleScores, Verdict

Progress = Callable[[int, int], None] | None
"""Optional progress callback ``progress(done, total)``; the CLI turns it into a progress bar."""


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Data poisoning: returns a lazy poisoned view of ``dataset`` plus the ground truth."""

    def poison(self, dataset, *, model: torch.nn.Module | None = None,
               generator: torch.Generator | None = None) -> Poisoned:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class ModelAttack:
    """An attack that edits a model directly (e.g. the Trojaning attack)."""

    def implant(self, model: torch.nn.Module, data, *,
                generator: torch.Generator | None = None) -> Implanted:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Detector:
    """Model inspection: is this model backdoored?"""

    def detect(self, model: torch.nn.Module, clean, *,
               generator: torch.Generator | None = None, progress: Progress = None) -> Verdict:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Sanitizer:
    """Training-set filtering: which samples are poison?"""

    def scan(self, model: torch.nn.Module, dataset) -> SampleScores:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class InputFilter:
    """Inference-time filter: a score per input, higher = more suspicious."""

    def score(self, model: torch.nn.Module, x: torch.Tensor, clean_pool: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Purifier:
    """Input sanitization: returns purified images to classify instead of ``x``."""

    def purify(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Mitigator:
    """Model repair: returns a **new** model; the input model is never modified."""

    def repair(self, model: torch.nn.Module, clean, *,
               generator: torch.Generator | None = None, progress: Progress = None) -> Repaired:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Certifier:
    """Guarantees: ``certify(...)`` returns a typed certificate."""

    def certify(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError
