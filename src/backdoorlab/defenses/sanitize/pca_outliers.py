"""Per-class PCA outlier removal (seed 000, "Training-time input filtering").

Threat model: the defender holds the (possibly poisoned) training set; poisoned samples are
represented differently from clean ones by a model trained on all of it, so they are outliers of
their (poisoned) label's representations.

The seed's four steps:
  1. train a model on all the training data (the ``model`` given to ``scan``);
  2. per class y, PCA of the representations R_i = model.features(x_i):
         M = [R_i - R̂]  (centred),  M^T M / (n - 1) = V Λ V^T,  keep the top k components;
  3. remove the outliers of each class.  Outlier statistic: Hotelling's T² in the PCA subspace,
         T²_i = Σ_{j<=k} ((R_i - R̂) · v_j)^2 / λ_j,
     turned into a robust z-score within the class,
         z_i = (T²_i - median(T²)) / (1.4826 · MAD(T²)),
     and flagged when z_i > ``threshold``;
  4. retrain on the remaining samples (``defenses.sanitize.retrain``).

Deviations:
  * The seed does not fix the outlier rule; we use T² with a robust (median / MAD) cut, so no
    poison fraction has to be known — unlike spectral signatures, which removes a fixed count.
    T² weighs all k directions equally (whitened), so a poison cluster is found even when it is
    not along the top direction, at the price of flagging the tails of clean classes too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._stats import MAD_CONSISTENCY
from ...roles import Sanitizer
from ...types import SampleScores
from ._representations import check_fields, class_indices, principal_axes, representations

__all__ = ["PCAOutliers", "pca_t2"]


def pca_t2(R: torch.Tensor, k: int) -> torch.Tensor:
    """Step 2 for one class: Hotelling's T² of each row in the top-``k`` principal subspace."""
    n = len(R)
    if n < 3:
        return torch.zeros(n, dtype=R.dtype)
    M, lam, V = principal_axes(R, min(k, n - 1))
    lam = lam * n / (n - 1)                                           # eigenvalues of M^T M / (n - 1)
    keep = lam > lam[0] * 1e-9                                        # drop null directions
    P = M @ V[:, keep]
    return (P ** 2 / lam[keep]).sum(1)


def robust_z(v: torch.Tensor) -> torch.Tensor:
    """(v - median) / (1.4826 MAD), one-sided (large values are outliers)."""
    med = v.median()
    mad = (v - med).abs().median() * MAD_CONSISTENCY
    return (v - med) / mad.clamp_min(torch.finfo(v.dtype).tiny)


@dataclass(frozen=True, kw_only=True)
class PCAOutliers(Sanitizer):
    """Per-class PCA outlier removal.

    n_components: k, principal components kept per class.
    threshold:    robust z-score of T² above which a sample is an outlier.
    batch_size:   batch size for computing representations (no effect on the result).
    """

    n_components: int = 10
    threshold: float = 3.0
    batch_size: int = 512

    def __post_init__(self) -> None:
        check_fields(self, n_components="int+", threshold="+", batch_size="int+")

    def scan(self, model: torch.nn.Module, dataset) -> SampleScores:
        R, y = representations(model, dataset, batch_size=self.batch_size, owner="PCAOutliers.scan")  # 1
        z = torch.zeros(len(y), dtype=torch.float64)
        for _, idx in class_indices(y):
            if len(idx) >= 3:
                z[idx] = robust_z(pca_t2(R[idx], self.n_components))            # 2
        flagged = z > self.threshold                                            # 3
        return SampleScores(scores=z.float(), flagged=flagged, threshold=float(self.threshold))
