"""Metrics: clean accuracy, attack success rate, robust accuracy, per-class accuracy, intervals.

Definitions (used by every benchmark and the CLI):
* clean accuracy (CA): fraction of clean test samples classified correctly;
* attack success rate (ASR): over test samples whose true label differs from the attacker's
  target, the fraction classified as the target once stamped (for ``InstanceGoal``: the fraction
  of the target instances classified as the target label);
* robust accuracy (RA): over the same stamped samples, the fraction still classified correctly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._stats import auroc, tpr_at_fpr, wilson_interval
from ._torch import predict
from .data import as_tensors
from .types import Goal, InstanceGoal, TriggerGoal

__all__ = ["clean_accuracy", "attack_success_rate", "robust_accuracy", "per_class_accuracy",
           "evaluate", "Evaluation", "wilson_interval", "auroc", "tpr_at_fpr"]


def clean_accuracy(model: torch.nn.Module, data) -> float:
    x, y = as_tensors(data)
    return float((predict(model, x) == y.to(x.device)).float().mean())


def _stamped(goal: TriggerGoal, data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = as_tensors(data)
    keep = goal.relevant(y)
    return goal.apply(x[keep]), y[keep], goal.target_for(y[keep])


def _asr_counts(model: torch.nn.Module, goal: Goal, data) -> tuple[int, int, int]:
    """(successes, robust-correct, n) for ``goal`` on ``data``."""
    if isinstance(goal, InstanceGoal):
        pred = predict(model, goal.x)
        return int((pred == goal.target).sum()), 0, len(pred)
    xs, y, tgt = _stamped(goal, data)
    if len(xs) == 0:
        return 0, 0, 0
    pred = predict(model, xs)
    return int((pred == tgt).sum()), int((pred == y).sum()), len(pred)


def attack_success_rate(model: torch.nn.Module, goal: Goal, data=None) -> float:
    k, _, n = _asr_counts(model, goal, data)
    return k / n if n else float("nan")


def robust_accuracy(model: torch.nn.Module, goal: TriggerGoal, data) -> float:
    _, r, n = _asr_counts(model, goal, data)
    return r / n if n else float("nan")


def per_class_accuracy(model: torch.nn.Module, data, num_classes: int | None = None) -> torch.Tensor:
    x, y = as_tensors(data)
    pred = predict(model, x)
    K = num_classes or int(y.max()) + 1
    correct = torch.zeros(K).index_add_(0, y, (pred == y).float())
    total = torch.zeros(K).index_add_(0, y, torch.ones(len(y)))
    return correct / total.clamp_min(1)


@dataclass(frozen=True)
class Evaluation:
    """CA / ASR / RA with Wilson 95% intervals and sample counts."""

    clean_accuracy: float
    clean_accuracy_ci: tuple[float, float]
    n_clean: int
    attack_success_rate: float | None = None
    attack_success_rate_ci: tuple[float, float] | None = None
    robust_accuracy: float | None = None
    robust_accuracy_ci: tuple[float, float] | None = None
    n_stamped: int = 0
    per_class_accuracy: tuple[float, ...] = ()

    def to_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def evaluate(model: torch.nn.Module, data, goal: Goal | None = None) -> Evaluation:
    """CA (and ASR / RA for a goal) of ``model`` on test ``data`` with 95% Wilson intervals."""
    x, y = as_tensors(data)
    pred = predict(model, x)
    k, n = int((pred == y).sum()), len(y)
    K = int(getattr(getattr(data, "info", None), "num_classes", 0) or int(y.max()) + 1)
    correct = torch.zeros(K).index_add_(0, y, (pred == y).float())   # per class, from the same forward
    per = correct / torch.zeros(K).index_add_(0, y, torch.ones(len(y))).clamp_min(1)
    fields = dict(clean_accuracy=k / n, clean_accuracy_ci=wilson_interval(k, n), n_clean=n,
                  per_class_accuracy=tuple(round(float(v), 6) for v in per))
    if goal is not None:
        s, r, m = _asr_counts(model, goal, (x, y))
        if m:
            fields.update(attack_success_rate=s / m, attack_success_rate_ci=wilson_interval(s, m),
                          n_stamped=m)
            if isinstance(goal, TriggerGoal):
                fields.update(robust_accuracy=r / m, robust_accuracy_ci=wilson_interval(r, m))
    return Evaluation(**fields)
