"""Spectral signatures (Tran et al. 2018) against literal maths and planted poison."""
import math

import numpy as np
import pytest
import torch
from sanitize_planted import planted

from backdoorlab.defenses.sanitize import SpectralSignatures
from backdoorlab.defenses.sanitize._representations import principal_axes
from backdoorlab.defenses.sanitize.spectral import spectral_scores, split_high


def test_scores_are_the_squared_projection_on_the_top_singular_vector():
    R = torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    R[:, 2] *= 5                                              # a clear top direction
    M = R.numpy() - R.numpy().mean(0)                         # step (2), literally
    v = np.linalg.svd(M, full_matrices=False)[2][0]          # step (3): top right singular vector
    expected = np.array([float(np.dot(M[i], v)) ** 2 for i in range(len(M))])   # step (4)
    assert np.allclose(spectral_scores(R).numpy(), expected, rtol=1e-9, atol=1e-9)


def test_removes_one_and_a_half_epsilon_of_every_class_and_finds_planted_poison():
    model, ds, mask = planted(n_poison=20)                    # 20 of 220 in class 0 (9%)
    s = SpectralSignatures(poison_fraction=0.1).scan(model, ds)
    counts = torch.bincount(ds.y[s.flagged], minlength=3)
    sizes = torch.bincount(ds.y, minlength=3)
    assert counts.tolist() == [math.ceil(0.15 * int(n)) for n in sizes]   # 33, 30, 30
    assert bool(s.flagged[mask].all())                        # every poisoned sample removed
    assert s.threshold is None and s.scores.shape == mask.shape


def test_majority_poison_defeats_the_symmetric_score():
    # 200 poisoned + 200 clean in class 0: the clusters sit symmetrically around the class mean,
    # so removing 1.5 x 50% of the class catches only part of the poison (the method's limit).
    model, ds, mask = planted(n_poison=200)
    s = SpectralSignatures(poison_fraction=0.5).scan(model, ds)
    assert float(s.flagged[mask].double().mean()) < 0.9
    # orient=True ranks by the signed projection towards other-label evidence: the poison end only
    o = SpectralSignatures(poison_fraction=0.5, orient=True).scan(model, ds)
    assert bool(o.flagged[mask].all()) and int(o.flagged.sum()) == int(s.flagged.sum())


@pytest.mark.parametrize("n_poison", [20, 200])
def test_exclusion_preset_removes_the_poison_and_leaves_clean_classes(n_poison):
    # orient + cut at the gap of the signed projection + only classes whose candidates the model
    # attributes to other labels: the poison goes at 9% and at 50% of the class, clean classes stay
    model, ds, mask = planted(n_poison=n_poison)
    s = SpectralSignatures(poison_fraction=1.0, orient=True, cut="split", min_gap=1.5).scan(model, ds)
    assert bool(s.flagged[mask].all())
    assert int(s.flagged[ds.y != 0].sum()) == 0               # classes 1, 2 are not cut at all
    assert int(s.flagged[~mask].sum()) <= 0.05 * n_poison      # class 0's clean images stay


def test_min_gap_keeps_clean_twin_whole_and_split_is_capped():
    model, ds, mask = planted(n_poison=0)
    s = SpectralSignatures(poison_fraction=1.0, orient=True, cut="split", min_gap=1.5).scan(model, ds)
    assert int(s.flagged.sum()) == 0
    capped = SpectralSignatures(poison_fraction=0.02, cut="split").scan(model, ds)   # ⌈1.5 x 2% x 200⌉ = 6
    assert torch.bincount(ds.y[capped.flagged], minlength=3).max() <= 6


def test_split_high_and_principal_axes_literal():
    v = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.1], dtype=torch.float64)
    assert split_high(v).tolist() == [False, False, False, True, True]
    R = torch.randn(50, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    M, lam, V = principal_axes(R, 2)
    _, sv, vt = np.linalg.svd(R.numpy() - R.numpy().mean(0), full_matrices=False)
    assert np.allclose(lam.numpy(), sv[:2] ** 2 / 50)
    assert np.allclose(np.abs(V.numpy().T @ vt[:2].T), np.eye(2), atol=1e-9)


@pytest.mark.parametrize("field,value", [("poison_fraction", 0.0), ("poison_fraction", 1.5),
                                         ("multiplier", -1.0), ("batch_size", 0), ("orient", 1),
                                         ("cut", "middle"), ("min_gap", -1.0)])
def test_invalid_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f"SpectralSignatures.{field}"):
        SpectralSignatures(**{field: value})
