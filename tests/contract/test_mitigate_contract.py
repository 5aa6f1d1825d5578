"""Contract of every entry of ``defenses.mitigate.MITIGATORS`` (DESIGN section 7).

Each mitigator, built with cheap defaults for the 8x8 digits, must: return ``Repaired`` with a new
model that shares no tensor with the input; leave the input model bit-identical (weights, buffers,
requires_grad, train/eval modes); leave no hooks on either model; give the same model for the same
seed; reject an invalid (NaN) numeric hyper-parameter with a ValueError naming it.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from backdoorlab.data import clean_subset
from backdoorlab.defenses.mitigate import MITIGATORS
from backdoorlab.roles import Mitigator
from backdoorlab.types import Repaired


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Fields with these names are made small for every mitigator (any present field is used).
CHEAP = {"epochs": 1, "teacher_epochs": 1, "rounds": 1, "uap_steps": 2, "fixed_point_steps": 2,
         "steps": 20, "reverse_steps": 20, "unlearn_epochs": 1, "min_outer_steps": 1}
# Per-method overrides on top of CHEAP.
OVERRIDES: dict[str, dict] = {}


def _cheap_detector(default):
    """A short run of the same detector class (mitigators that reverse a trigger first)."""
    names = {f.name for f in dataclasses.fields(type(default))}
    return type(default)(**{k: v for k, v in {"epochs": 3, "batches_per_epoch": 3}.items() if k in names})


def build(name: str) -> Mitigator:
    cls = MITIGATORS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in CHEAP.items() if k in fields}
    det = fields.get("detector")
    if det is not None and det.default_factory is not dataclasses.MISSING:
        kw["detector"] = _cheap_detector(det.default_factory())
    kw.update(OVERRIDES.get(name, {}))
    return cls(**kw)


@pytest.fixture(scope="module")
def setting(badnets, digits):
    model, _, _ = badnets
    train, _ = digits
    return model, clean_subset(train, per_class=6, generator=gen(5))


def _snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])


def _hooks(model) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    for p in model.parameters():
        n += len(p._backward_hooks or {})
    return n


@pytest.mark.parametrize("name", sorted(MITIGATORS))
def test_contract(name, setting):
    model, clean = setting
    before = _snapshot(model)
    hooks_before = _hooks(model)
    m = build(name)
    r1 = m.repair(model, clean, generator=gen(7))
    assert isinstance(r1, Repaired) and isinstance(r1.model, torch.nn.Module)
    assert r1.model is not model
    ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not ptrs & {t.data_ptr() for t in r1.model.state_dict().values()}
    after = _snapshot(model)
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]
    assert _hooks(model) == hooks_before == 0
    assert _hooks(r1.model) == 0
    # same seed -> same model
    r2 = m.repair(model, clean, generator=gen(7))
    s1, s2 = r1.model.state_dict(), r2.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    x = clean.x[:8]
    assert r1.model(x).shape == model(x).shape


@pytest.mark.parametrize("name", sorted(MITIGATORS))
def test_invalid_numeric_field_is_named(name):
    cls = MITIGATORS[name]
    numeric = [f for f in dataclasses.fields(cls)
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)]
    assert numeric, f"{name} has no numeric hyper-parameter to check"
    for f in numeric:
        with pytest.raises(ValueError, match=f.name):
            cls(**{f.name: math.nan})
