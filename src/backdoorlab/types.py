"""Frozen result types shared by every role (DESIGN section 4).

Every verb in backdoorlab returns one of these values; nothing returns a dict with magic keys.
Method-specific evidence is a dataclass defined next to its algorithm and stored in
``Verdict.evidence``.  Certificates are defined in ``backdoorlab.certify`` next to their certifier.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .triggers import Trigger

__all__ = [
    "TriggerGoal", "InstanceGoal", "Goal", "Poisoned", "Implanted", "Verdict", "SampleScores",
    "Screened", "Repaired",
]


@dataclass(frozen=True, kw_only=True)
class TriggerGoal:
    """The attacker's goal for a trigger backdoor.

    All-to-one: ``TriggerGoal(trigger=t, target=7)``.  All-to-all or any other relabelling:
    ``TriggerGoal(trigger=t, mapping=(1, 2, ..., 0))`` where ``mapping[y]`` is the label the
    attacker wants for a stamped input of true class ``y``.
    """

    trigger: Trigger
    target: int | None = None
    mapping: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.target is None) == (self.mapping is None):
            raise ValueError(
                "TriggerGoal needs exactly one of target (all-to-one) or mapping (all-to-all); "
                f"got target={self.target!r}, mapping={self.mapping!r}."
            )
        if self.target is not None and (not isinstance(self.target, int) or self.target < 0):
            raise ValueError(f"TriggerGoal.target must be a non-negative int; got {self.target!r}.")
        if self.mapping is not None:
            object.__setattr__(self, "mapping", tuple(int(m) for m in self.mapping))

    @classmethod
    def all_to_all(cls, trigger: Trigger, num_classes: int, shift: int = 1) -> "TriggerGoal":
        """BadNets' all-to-all goal y -> (y + shift) mod K."""
        return cls(trigger=trigger, mapping=tuple((y + shift) % num_classes for y in range(num_classes)))

    def target_for(self, y: torch.Tensor) -> torch.Tensor:
        """The label the attacker wants for stamped inputs whose true labels are ``y``."""
        if self.target is not None:
            return torch.full_like(y, self.target)
        table = torch.tensor(self.mapping, dtype=torch.long, device=y.device)
        return table[y]

    def relevant(self, y: torch.Tensor) -> torch.Tensor:
        """Mask of samples on which success is meaningful: true label differs from the target."""
        return self.target_for(y) != y

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.trigger.apply(x)


@dataclass(frozen=True, kw_only=True)
class InstanceGoal:
    """Targeted misclassification of specific instances (Poison Frogs): ``x`` -> ``target``."""

    x: torch.Tensor
    target: int

    def __post_init__(self) -> None:
        if self.x.dim() == 3:
            object.__setattr__(self, "x", self.x.unsqueeze(0))
        if self.x.dim() != 4:
            raise ValueError(f"InstanceGoal.x must have shape (N, C, H, W); got {tuple(self.x.shape)!r}.")


Goal = TriggerGoal | InstanceGoal


@dataclass(frozen=True, kw_only=True)
class Poisoned:
    """Result of a data-poisoning ``Attack.poison``: the lazy poisoned view and its ground truth."""

    dataset: Any
    poison_indices: torch.Tensor
    goal: Goal


@dataclass(frozen=True, kw_only=True)
class Implanted:
    """Result of a ``ModelAttack.implant``: a new (trojaned) model and the attacker's goal."""

    model: torch.nn.Module
    goal: Goal
    summary: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """Result of ``Detector.detect``: is the model backdoored, and the evidence for it.

    ``score`` is the detector's statistic (higher = more suspicious) compared with ``threshold``;
    ``suspects`` are the suspected target labels.
    """

    backdoored: bool
    score: float
    threshold: float
    suspects: tuple[int, ...]
    evidence: Any = None


@dataclass(frozen=True, kw_only=True)
class SampleScores:
    """Result of ``Sanitizer.scan``: per-sample suspicion (higher = more suspicious) and the flags."""

    scores: torch.Tensor
    flagged: torch.Tensor
    threshold: float | None = None


@dataclass(frozen=True, kw_only=True)
class Screened:
    """Result of ``Guard(x)``: predictions, filter scores, and which inputs were withheld."""

    predictions: torch.Tensor
    scores: torch.Tensor
    flagged: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class Repaired:
    """Result of ``Mitigator.repair``: a new model (the input model is untouched) and a summary."""

    model: torch.nn.Module
    summary: dict[str, Any] = field(default_factory=dict)


def as_tuple(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)
