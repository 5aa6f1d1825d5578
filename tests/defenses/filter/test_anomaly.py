"""Neural Trojans' anomaly filter: crafting is reproducible and local; the tree flags the
hand-wired 2x2 patch it has never seen."""
from __future__ import annotations

import pytest
import torch

from backdoorlab.data import as_tensors
from backdoorlab.defenses.filter import Guard
from backdoorlab.defenses.filter.anomaly import AnomalyFilter, craft_abnormal


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
    s = AnomalyFilter(space="both").score(model, xtr[:50], xtr[100:300])
    assert s.shape == (50,) and float(s.min()) >= 0 and float(s.max()) <= 1


def test_validation():
    with pytest.raises(ValueError, match="space"):
        AnomalyFilter(space="logits")
    with pytest.raises(ValueError, match="max_patch"):
        AnomalyFilter(max_patch=0.0)
