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
    target class is about 50% poison, so the right bound is ``poison_fraction`` ≈ 0.5, not 0.1
    (BackdoorBench keeps 1.5 x 10% = 15% of the class, which cannot remove the poison; see
    ``benchmarks/results/sanitize.md``).  At 50% the two clusters sit symmetrically around R̂
    and the squared score cannot tell them apart (MNIST: within-class AUROC 0.48) — the paper's
    Lemma assumes the poison is a minority of its class.
  * ``SampleScores.scores`` is τ_i divided by the mean τ of its class (scale-free across
    classes; signed when ``orient``); ``threshold`` is None because the cut is per class.
  * v is the top eigenvector of M^T M (same vector as the SVD, computed faster).
  * Options for the majority-poison regime (not in the paper; off by default):
    - ``orient=True`` ranks by the *signed* projection instead of its square, pointing v to the
      end where the model sees more evidence for another label (the sign of the covariance of
      (R_i - R̂)·v with e_i = max_{c≠y} z_c(x_i), z = logits: poison keeps its source-class
      content — activation clustering's exclusion argument).  The top direction itself still
      separates the halves (MNIST 50% poison: within-class AUROC 1.00 signed vs 0.48 squared).
    - ``cut="split"`` replaces the fixed count by the gap in the ranking score: a 1-D 2-means
      split of the class's scores, the high side flagged (at most ⌈1.5 ε |D_y|⌉ of it, the
      paper's count as a cap).  The removed share then follows the data, not the bound ε.
    - ``min_gap`` > 0 cuts a class only when the candidates and the rest of the class differ in
      that other-label evidence e by at least ``min_gap`` pooled standard deviations — i.e. only
      classes that look poisoned, instead of 1.5 ε of every class.  On MNIST the poisoned class
      gives 2.7 (50% poison) / 1.7 (10%) and the clean classes at most 1.2; on our GTSRB-subset
      model the clean classes give 1.6-3.4, so the gate is model-dependent (it cut 3989 clean
      images there): check the per-class gaps before trusting a threshold.
    The options assume the poison is the minority side or half of its class and that the backdoor
    is learned; with 95% poison in a class (GTSRB subset, 10% all-to-one into a 70-image class)
    the clean images are the outliers and no variant finds the poison (see the benchmark).
    ``orient=True, cut="split", min_gap=1.5`` is the "spectral signatures + exclusion" preset
    measured in ``benchmarks/results/sanitize.md``; with it a bound ε = 0.5 costs clean classes
    nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..._validation import one_of
from ...roles import Sanitizer
from ...types import SampleScores
from ._representations import (check_fields, class_indices, evidence_gap, other_label_evidence, principal_axes,
                               representations)

__all__ = ["SpectralSignatures", "spectral_scores", "spectral_projection", "split_high"]


def spectral_projection(R: torch.Tensor) -> torch.Tensor:
    """(R_i - R̂) · v for one class, v the top right singular vector of the centred matrix."""
    if len(R) < 2:
        return torch.zeros(len(R), dtype=R.dtype)
    M, _, V = principal_axes(R, 1)                                     # (2)-(3)
    return M @ V[:, 0]


def spectral_scores(R: torch.Tensor) -> torch.Tensor:
    """Steps (2)-(4) for one class: τ_i = ((R_i - R̂) · v)^2 with v the top right singular vector."""
    return spectral_projection(R) ** 2                                 # (4)


def split_high(v: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """The high side of a 1-D 2-means split of ``v`` (Lloyd's iterations from the mean)."""
    thr = v.mean()
    for _ in range(iters):
        hi = v > thr
        if bool(hi.all()) or not bool(hi.any()):
            break
        new = (v[hi].mean() + v[~hi].mean()) / 2
        if bool(new == thr):
            break
        thr = new
    return v > thr


@dataclass(frozen=True, kw_only=True)
class SpectralSignatures(Sanitizer):
    """Spectral signatures.

    poison_fraction: ε / |D_y| — upper bound on the poisoned fraction of any one class.
    multiplier:      the paper's 1.5: remove ``multiplier * poison_fraction`` of each class
                     (with ``cut="split"``: at most that many).
    orient:          rank by the signed projection towards other-label evidence (see Deviations).
    cut:             "top" (paper: the top ⌈multiplier ε |D_y|⌉ scores) or "split" (the high side
                     of a 1-D 2-means split of the scores, capped at that count).
    min_gap:         cut a class only when its candidates differ from the rest of the class by at
                     least this many pooled SDs of other-label evidence (0 = every class, paper).
    batch_size:      batch size for computing representations (no effect on the result).
    """

    poison_fraction: float = 0.1
    multiplier: float = 1.5
    orient: bool = False
    cut: str = "top"
    min_gap: float = 0.0
    batch_size: int = 512

    def __post_init__(self) -> None:
        check_fields(self, poison_fraction=(0.0, 1.0, True, False), multiplier="+", batch_size="int+")
        if not isinstance(self.orient, bool):
            raise ValueError(f"SpectralSignatures.orient must be a bool; got {self.orient!r}.")
        one_of("SpectralSignatures", "cut", self.cut, {"top", "split"})
        if not (isinstance(self.min_gap, (int, float)) and not isinstance(self.min_gap, bool)
                and math.isfinite(self.min_gap) and self.min_gap >= 0):
            raise ValueError(f"SpectralSignatures.min_gap must be a finite number >= 0; got {self.min_gap!r}.")

    def scan(self, model: torch.nn.Module, dataset) -> SampleScores:
        R, logits, y = representations(model, dataset, batch_size=self.batch_size, logits=True,
                                       owner="SpectralSignatures.scan")
        scores = torch.zeros(len(y), dtype=torch.float64)
        flagged = torch.zeros(len(y), dtype=torch.bool)
        for label, idx in class_indices(y):                            # for each label y
            proj = spectral_projection(R[idx])
            tau = proj ** 2                                            # (1)-(4)
            rank = tau
            e = other_label_evidence(logits[idx], label) if (self.orient or self.min_gap > 0) else None
            if self.orient:
                sign = 1.0 if float(((proj - proj.mean()) * (e - e.mean())).sum()) >= 0 else -1.0
                rank = sign * proj
            k = min(len(idx), math.ceil(self.multiplier * self.poison_fraction * len(idx) - 1e-9))
            top = torch.zeros(len(idx), dtype=torch.bool)
            top[rank.topk(k).indices] = True                           # (5) top 1.5 ε scores
            cand = top & split_high(rank) if self.cut == "split" and len(idx) > 1 else top
            if self.min_gap <= 0 or evidence_gap(e, cand) >= self.min_gap:
                flagged[idx[cand]] = True
            norm = tau.mean().clamp_min(torch.finfo(torch.float64).tiny)
            scores[idx] = (rank.sign() * tau if self.orient else tau) / norm
        return SampleScores(scores=scores.float(), flagged=flagged, threshold=None)
