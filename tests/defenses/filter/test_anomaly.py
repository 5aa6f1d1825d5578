"""Neural Trojans' anomaly filter: crafting is reproducible and local; the tree is fitted once; it
flags the hand-wired 2x2 patch it has never seen."""
from __future__ import annotations

import pytest
import torch

from backdoorlab.data import as_tensors
from backdoorlab.defenses.filter import Guard
from backdoorlab.defenses.filter.anomaly import AnomalyFilter, block_stats, craft_abnormal


def test_crafting_is_local_and_reproducible():
    x = torch.full((300, 1, 8, 8), 0.5)
    a = craft_abnormal(x, 0.25, torch.Generator().manual_seed(0))
    b = craft_abnormal(x, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.equal(x, torch.full((300, 1, 8, 8), 0.5))  # input not modified
    changed = (a != x).flatten(1).sum(1)
    # every anomaly changes the 0.5 image (solid squares are black or white), at most 2x2 = 4 pixels
    assert int(changed.min()) >= 1 and int(changed.max()) <= 4
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_flags_handwired_patch_and_not_clean(handwired, digits):
    bd, twin, trig, target = handwired
    train, test = digits
    xtr, _ = as_tensors(train)
    xte, yte = as_tensors(test)
    guard = Guard.calibrate(AnomalyFilter(), bd, xtr[:400], fpr=0.05)
    assert float(guard(trig.apply(xte)).flagged.float().mean()) >= 0.95
    assert float(guard(xte).flagged.float().mean()) <= 0.1


def test_feature_space_uses_the_model(badnets, digits):
    model, _, _ = badnets
    train, _ = digits
    xtr, _ = as_tensors(train)
    s = AnomalyFilter(space="both", n_trees=1).score(model, xtr[:50], xtr[100:300])
    assert s.shape == (50,) and float(s.min()) >= 0 and float(s.max()) <= 1


def test_crafting_kinds_and_block_stats():
    x = torch.zeros(600, 3, 12, 12)
    a = craft_abnormal(x, 0.25, torch.Generator().manual_seed(1))
    changed = (a != x).any(1)                                  # (N, H, W): where an anomaly landed
    n = changed.flatten(1).sum(1)
    assert int(n.max()) <= 9                                   # squares of side <= 3, or <= 4 pixels
    assert int((n == 0).sum()) > 0                             # black squares on black: no change
    h, w = changed.any(2).sum(1), changed.any(1).sum(1)        # bounding box of the changed pixels
    assert bool((((n == h * w) & (h == w)) | (n <= 4)).all())  # a full square, or <= 4 scattered pixels
    assert int(((n == h * w) & (h == w) & (n > 4)).sum()) > 0  # and squares do occur
    s = block_stats(a, 4)
    assert s.shape == (600, 3 * 3 * 16)
    assert torch.equal(s[:, :48].amax(1) > 0, a.flatten(1).amax(1) > 0)   # cell max sees every patch


def test_tree_fitted_once_per_model_and_pool(badnets, digits, monkeypatch):
    model, _, _ = badnets
    xtr, _ = as_tensors(digits[0])
    f = AnomalyFilter()
    calls = []
    real = AnomalyFilter.fit_trees
    monkeypatch.setattr(AnomalyFilter, "fit_trees", lambda self, m, p: calls.append(1) or real(self, m, p))
    pool = xtr[:200]
    a = f.score(model, xtr[300:310], pool)
    b = f.score(model, xtr[300:310], pool)
    assert len(calls) == 1 and torch.equal(a, b)
    f.score(model, xtr[300:310], xtr[:200])                    # another pool object: refit
    assert len(calls) == 2


@pytest.mark.parametrize("field, value, named", [("space", "logits", "space"), ("max_patch", 0.0, "max_patch"),
                                                 ("n_trees", 0, "AnomalyFilter.n_trees"),
                                                 ("grid", 0, "AnomalyFilter.grid"),
                                                 ("min_change", 1.0, "AnomalyFilter.min_change")])
def test_validation(field, value, named):
    with pytest.raises(ValueError, match=named):
        AnomalyFilter(**{field: value})
