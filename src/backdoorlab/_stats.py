"""Generic statistics used across methods (each checked against hand-computed numbers in tests)."""
from __future__ import annotations

import math

import torch

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of sigma under normality


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) Clopper-Pearson interval for k successes in n trials."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def median(values: torch.Tensor) -> torch.Tensor:
    """The median as numpy defines it: the mean of the two middle values for an even count
    (``torch.median`` returns the lower one)."""
    v = values.double().flatten()
    if v.numel() == 0:
        raise ValueError("median of an empty set of values.")
    return torch.quantile(v, 0.5)


def anomaly_index(values: torch.Tensor) -> torch.Tensor:
    """|v - median| / (1.4826 * MAD) per entry (Neural Cleanse's outlier statistic; numpy medians,
    as the official code computes them)."""
    v = values.double()
    med = median(v)
    mad = median((v - med).abs()) * MAD_CONSISTENCY
    if mad == 0:
        mad = torch.tensor(torch.finfo(torch.float64).tiny, dtype=torch.float64)
    return ((v - med).abs() / mad).to(values.dtype if values.is_floating_point() else torch.float64)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve for ``scores`` (higher = positive) against boolean ``labels``.

    Mann-Whitney U with average ranks for ties; NaN when one class is empty."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = s.argsort()
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inverse, counts = torch.unique(sorted_s, return_inverse=True, return_counts=True)
    if len(uniq) < len(s):
        rank_sum = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks[order])
        ranks[order] = (rank_sum / counts)[inverse]
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def threshold_at_fpr(clean_scores: torch.Tensor, fpr: float) -> float:
    """Smallest threshold t with at most ``fpr`` of ``clean_scores`` strictly above t
    (the (1 - fpr) empirical quantile, taken conservatively)."""
    s = torch.as_tensor(clean_scores, dtype=torch.float64).flatten().sort().values
    n = len(s)
    if n == 0:
        raise ValueError("threshold_at_fpr needs at least one clean score.")
    k = math.ceil((1 - fpr) * n) - 1  # index of the order statistic
    return float(s[min(max(k, 0), n - 1)])


def tpr_at_fpr(scores: torch.Tensor, labels: torch.Tensor, fpr: float) -> float:
    """True-positive rate at the threshold that lets through at most ``fpr`` of the negatives."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().bool()
    t = threshold_at_fpr(s[~y], fpr)
    return float((s[y] > t).double().mean())
