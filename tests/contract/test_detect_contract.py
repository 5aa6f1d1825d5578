"""Contract of every entry of ``defenses.detect.DETECTORS`` (DESIGN section 7), on the hand-wired
backdoored digits model and its clean twin.

Each detector, with a short budget for the 8x8 digits (``FAST``, per registry name), must: return a
``Verdict`` whose fields have the documented types (suspects are valid labels, score and threshold
finite); leave the input model bit-identical (weights, buffers, requires_grad, train/eval modes,
also when it is in train mode on entry) and without hooks; give the same verdict for the same seed;
reject an invalid (NaN) numeric hyper-parameter with a ValueError naming it.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from backdoorlab.data import clean_subset
from backdoorlab.defenses.detect import DETECTORS
from backdoorlab.roles import Detector
from backdoorlab.types import Verdict

# Short budgets per registry name (the contract is about behaviour, not detection quality).
FAST: dict[str, dict] = {
    "neural-cleanse": dict(epochs=2, batches_per_epoch=2, batch_size=8, patience=1, early_stop_patience=1,
                           eval_images=50),
    "dl-tnd": dict(steps=4),
    "df-tnd": dict(steps=4, refine_steps=2, noise_inputs=3),
}
# Fields with these names are made small for any detector added later without a FAST entry.
CHEAP = {"epochs": 2, "steps": 4, "iterations": 4, "refine_steps": 2, "batches_per_epoch": 2}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(name: str, **extra) -> Detector:
    cls = DETECTORS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in CHEAP.items() if k in fields}
    kw.update(FAST.get(name, {}))
    kw.update(extra)
    return cls(**kw)


@pytest.fixture(scope="module")
def clean(digits):
    train, _ = digits
    return clean_subset(train, per_class=3, generator=gen(3))


def _snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])


def _same(a, b) -> bool:
    return (a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
            and a[1] == b[1] and a[2] == b[2])


def _hooks(model) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    return n


def test_registry_has_the_three_detectors():
    assert {"neural-cleanse", "dl-tnd", "df-tnd"} <= set(DETECTORS)
    assert all(issubclass(c, Detector) for c in DETECTORS.values())


@pytest.mark.parametrize("which", ["backdoored", "twin"])
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_contract(name, which, handwired, clean):
    backdoored, twin, _, _ = handwired
    model = backdoored if which == "backdoored" else twin
    before, hooks = _snapshot(model), _hooks(model)
    det = build(name)
    v1 = det.detect(model, clean, generator=gen(11))
    assert isinstance(v1, Verdict)
    assert isinstance(v1.backdoored, bool) and isinstance(v1.suspects, tuple)
    assert all(isinstance(s, int) and 0 <= s < 10 for s in v1.suspects)
    assert math.isfinite(v1.score) and math.isfinite(v1.threshold)
    assert v1.backdoored == bool(v1.suspects)
    assert _same(before, _snapshot(model)) and _hooks(model) == hooks
    v2 = det.detect(model, clean, generator=gen(11))
    assert (v2.backdoored, v2.suspects, v2.score, v2.threshold) == (v1.backdoored, v1.suspects, v1.score,
                                                                     v1.threshold)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_train_mode_and_grad_flags_are_restored(name, handwired, clean):
    import copy

    model = copy.deepcopy(handwired[1]).train()
    model.head.weight.requires_grad_(False)
    before = _snapshot(model)
    build(name).detect(model, clean, generator=gen(0))
    assert _same(before, _snapshot(model))


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_invalid_numeric_field_names_itself(name):
    cls = DETECTORS[name]
    numeric = [f for f in dataclasses.fields(cls)
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)]
    assert numeric, f"{name} has no numeric hyper-parameter to check"
    for f in numeric:
        with pytest.raises(ValueError, match=rf"\.{f.name} must"):
            cls(**{f.name: float("nan")})
