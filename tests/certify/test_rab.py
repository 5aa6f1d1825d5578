"""RAB: the exact 1-NN bounds contain the Monte-Carlo frequency; the ensemble certifies on digits 1 vs 7."""
from __future__ import annotations

import pytest
import torch

from backdoorlab.certify.rab import RABEnsemble, RABNearestNeighbor


def _pair(ds):
    s = (ds.y == 1) | (ds.y == 7)
    return ds.x[s], (ds.y[s] == 7).long()


def test_exact_1nn_bounds_contain_the_sampled_probability():
    g = torch.Generator().manual_seed(0)
    tx = torch.rand(12, 6, generator=g, dtype=torch.float64)
    ty = torch.tensor([0, 1] * 6)
    x = torch.rand(2, 6, generator=g, dtype=torch.float64)
    sigma = 0.3
    low, high = RABNearestNeighbor(sigma=sigma, grid=300).probabilities(tx, ty, x)
    assert bool((low <= high).all())
    draws = 20_000
    noisy = tx[None] + sigma * torch.randn(draws, *tx.shape, generator=g, dtype=torch.float64)
    for j in range(2):
        nearest = (noisy - x[j]).norm(dim=2).argmin(1)
        p = float(ty[nearest].double().mean())
        se = (p * (1 - p) / draws) ** 0.5
        assert float(low[j]) - 4 * se - 1e-3 <= p <= float(high[j]) + 4 * se + 1e-3
    assert float((high - low).max()) < 0.05                            # the grid makes the bounds tight


def test_ensemble_certifies_digits_1_vs_7(digits):
    train, test = digits
    x, y = _pair(train)
    xt, yt = _pair(test)
    cert = RABEnsemble(sigma=0.5, models=20, steps=60, alpha=0.01).certify(x, y, xt[:60])
    acc0 = cert.certified_accuracy(yt[:60], 0.0)
    assert acc0 > 0.8
    assert cert.certified_accuracy(yt[:60], 0.3) <= acc0
    # Hoeffding with 20 models at alpha 0.01: p_A_lower <= 1 - 0.479, so R <= sigma * Phi^-1(0.521) * 2 / 2
    from scipy.stats import norm

    h = (torch.log(torch.tensor(100.0)) / 40).sqrt()
    cap = 0.5 / 2 * (norm.ppf(1 - float(h)) - norm.ppf(float(h)))
    assert float(cert.radius.max()) <= cap + 1e-6


def test_invalid_fields():
    with pytest.raises(ValueError, match="RABEnsemble.models"):
        RABEnsemble(models=0)
    with pytest.raises(ValueError, match="RABNearestNeighbor.sigma"):
        RABNearestNeighbor(sigma=-1)
