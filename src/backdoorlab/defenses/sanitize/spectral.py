"""Spectral signatures (Tran, Li, Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018).

Threat model: the defender holds the (possibly poisoned) training set and a model trained on it,
and wants to remove the poisoned samples before retraining.

Algorithm 1 of the paper, for every label y with training inputs D_y = {x_1 .. x_n}:
  (1) R_i = R(x_i), the learned representation (here ``model.features``, the penultimate layer);
  (2) R̂ = (1/n) Σ_i R_i,  M = [R_i - R̂]_{i=1..n}  (n x D, centred);
  (3) v = top right singular vector of M;
  (4) τ_i = ((R_i - R̂) · v)^2  — the outlier score;
  (5) remove the 1.5 ε samples of D_y with the highest τ, ε = upper bound on the poisoned samples;
  then retrain on what is left (``defenses.sanitize.retrain``).

Why it works (the paper's Lemma): when a fraction ε of D_y is poison whose mean is far from the
clean mean, the top singular vector aligns with the difference of the two means, and the poison
sits at one end of it.  The squared projection is symmetric, so it needs the poison to be a
*minority* of the class: then R̂ lies near the clean mean and only the poison is far from it.

Deviations:
  * ε is given as a *fraction of each class* (``poison_fraction``), not as a count; the paper's
    count is ε |D_y|.  With an all-to-one attack that poisons 10% of the whole training set the
    target class is about 50% poison, so the right setting is ``poison_fraction`` ≈ 0.5, not 0.1
    (BackdoorBench keeps 1.5 x 10% = 15% of the class, which cannot remove the poison; see
    ``benchmarks/results/sanitize.md``).  At 50% the two clusters sit symmetrically around R̂
    and the squared score cannot tell them apart — a limit of the method, measured, not fixed.
  * ``SampleScores.scores`` is τ_i divided by the mean τ of its class (scale-free across
    classes); ``threshold`` is None because the cut is a per-class count.
  * v is the top eigenvector of M^T M (same vector as the SVD, computed faster).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...roles import Sanitizer
from ...types import SampleScores
from ._representations import check_fields, class_indices, representations

__all__ = ["SpectralSignatures", "spectral_scores"]


def spectral_scores(R: torch.Tensor) -> torch.Tensor:
    """Steps (2)-(4) for one class: τ_i = ((R_i - R̂) · v)^2 with v the top right singular vector."""
    M = R - R.mean(0, keepdim=True)                                   # (2)
    if len(M) < 2:
        return torch.zeros(len(M), dtype=R.dtype)
    _, vecs = torch.linalg.eigh(M.T @ M)                               # (3) v = top eigenvector
    v = vecs[:, -1]
    return (M @ v) ** 2                                                # (4)


@dataclass(frozen=True, kw_only=True)
class SpectralSignatures(Sanitizer):
    """Spectral signatures.

    poison_fraction: ε / |D_y| — upper bound on the poisoned fraction of any one class.
    multiplier:      the paper's 1.5: remove ``multiplier * poison_fraction`` of each class.
    batch_size:      batch size for computing representations (no effect on the result).
    """

    poison_fraction: float = 0.1
    multiplier: float = 1.5
    batch_size: int = 512

    def __post_init__(self) -> None:
        check_fields(self, poison_fraction=(0.0, 1.0, True, False), multiplier="+", batch_size="int+")

    def scan(self, model: torch.nn.Module, dataset) -> SampleScores:
        R, y = representations(model, dataset, batch_size=self.batch_size, owner="SpectralSignatures.scan")
        scores = torch.zeros(len(y), dtype=torch.float64)
        flagged = torch.zeros(len(y), dtype=torch.bool)
        for _, idx in class_indices(y):                                # for each label y
            tau = spectral_scores(R[idx])                              # (1)-(4)
            k = min(len(idx), math.ceil(self.multiplier * self.poison_fraction * len(idx) - 1e-9))
            flagged[idx[tau.topk(k).indices]] = True                   # (5) top 1.5 ε scores
            scores[idx] = tau / tau.mean().clamp_min(torch.finfo(torch.float64).tiny)
        return SampleScores(scores=scores.float(), flagged=flagged, threshold=None)
