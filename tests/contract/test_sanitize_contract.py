"""Contract of every entry of ``defenses.sanitize.SANITIZERS`` (DESIGN section 7).

Each sanitizer, with its defaults: returns ``SampleScores`` (one float score and one bool flag per
sample); finds planted poison (recall >= 90%) and flags the clean twin (the same data without the
poison) no more than its expected rate; leaves the model bit-identical (weights, buffers, modes)
and hook-free; gives the same result twice; rejects an invalid (NaN) numeric field with a
ValueError naming it.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from backdoorlab.defenses.sanitize import SANITIZERS
from backdoorlab.roles import Sanitizer
from backdoorlab.types import SampleScores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "defenses" / "sanitize"))
from sanitize_planted import planted  # noqa: E402

NAMES = sorted(SANITIZERS)


def expected_clean_rate(s: Sanitizer) -> float:
    """Spectral signatures removes multiplier x poison_fraction of every class by design (plus
    rounding); every other sanitizer may flag at most 5% of clean data."""
    if hasattr(s, "poison_fraction"):
        return s.multiplier * s.poison_fraction + 0.01
    return 0.05


@pytest.fixture(scope="module")
def data():
    return planted(n_poison=20), planted(n_poison=0)


@pytest.mark.parametrize("name", NAMES)
def test_role_and_result_type(name):
    s = SANITIZERS[name]()
    assert isinstance(s, Sanitizer) and dataclasses.is_dataclass(s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(s, dataclasses.fields(s)[0].name, 1)


@pytest.mark.parametrize("name", NAMES)
def test_planted_poison_found_clean_twin_not_over_flagged(name, data):
    (model, ds, mask), (clean_model, clean_ds, _) = data
    s = SANITIZERS[name]()
    res = s.scan(model, ds)
    assert isinstance(res, SampleScores)
    assert res.scores.shape == mask.shape and res.scores.is_floating_point()
    assert res.flagged.shape == mask.shape and res.flagged.dtype == torch.bool
    assert float(res.flagged[mask].double().mean()) >= 0.9
    twin = s.scan(clean_model, clean_ds)
    assert float(twin.flagged.double().mean()) <= expected_clean_rate(s)


@pytest.mark.parametrize("name", NAMES)
def test_model_untouched_no_hooks_deterministic(name, badnets):
    model, _, poisoned = badnets
    model.train()                                             # a mode the scan must restore
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    try:
        s = SANITIZERS[name]()
        a, b = s.scan(model, poisoned.dataset), s.scan(model, poisoned.dataset)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert grads == [p.requires_grad for p in model.parameters()]
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
    assert torch.equal(a.flagged, b.flagged) and torch.equal(a.scores, b.scores)


@pytest.mark.parametrize("name", NAMES)
def test_invalid_numeric_field_named(name):
    cls = SANITIZERS[name]
    numeric = [f for f in dataclasses.fields(cls)
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)]
    assert numeric
    for f in numeric:
        with pytest.raises(ValueError, match=f"{cls.__name__}.{f.name}"):
            cls(**{f.name: math.nan})
