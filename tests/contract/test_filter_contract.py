"""Contract of every entry of ``defenses.filter.FILTERS`` and ``PURIFIERS`` (DESIGN section 7).

Filters, each calibrated by ``Guard`` on clean digits at FPR 5%:
  * planted backdoor found: on the BadNets and the hand-wired digits models, at least ``min_tpr``
    of stamped test inputs are flagged;
  * clean twin not flagged beyond the calibrated FPR: on the hand-wired model's clean twin, the
    fraction of clean test inputs flagged is at most FPR + 3 binomial standard errors (540 inputs);
  * scores are one float per input, deterministic for the same settings, and the model is left
    bit-identical with no hooks; an invalid (NaN) numeric field raises a ValueError naming it.
Purifiers (fitted first when they learn): output has the input's shape and lies in [0, 1]; same
settings -> same output; model bit-identical, no hooks; NaN field -> ValueError naming it; and
the ones expected to break a BadNets patch (``BREAKS``) bring its ASR below ``max_asr``.

Settings are generic; ``FILTER_OVERRIDES`` / ``PURIFIER_OVERRIDES`` hold per-name settings.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from backdoorlab._torch import predict
from backdoorlab.data import as_tensors
from backdoorlab.defenses.detect import NeuralCleanse
from backdoorlab.defenses.filter import FILTERS, PURIFIERS, Guard
from backdoorlab.roles import InputFilter, Purifier


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


FPR = 0.05
# Fields made small for every learning method (any present field is used).
CHEAP = {"epochs": 4}
# name -> {"params": constructor overrides, "min_tpr": flagged fraction of stamped inputs,
#          "models": which planted backdoors it must find ("badnets", "handwired")}
FILTER_DEFAULT = {"params": {}, "min_tpr": 0.9, "models": ("badnets", "handwired")}
FILTER_OVERRIDES: dict[str, dict] = {
    "strip": {"params": {"n_overlays": 16}},
    # Neural Cleanse must first recover the trigger: give it the demo's budget, not the cheap one.
    "nc-filter": {"models": ("badnets",), "min_tpr": 0.5,
                  "params": {"detector": NeuralCleanse(epochs=40, batches_per_epoch=5, batch_size=16, patience=2,
                                                       early_stop_patience=4)}},
}
# name -> {"params": ..., "max_asr": ASR on the BadNets digits model after purification, or None}
PURIFIER_DEFAULT = {"params": {}, "max_asr": None}
PURIFIER_OVERRIDES: dict[str, dict] = {
    "flip": {"max_asr": 0.2},
    "autoencoder": {"params": {"epochs": 4}},
    "februus": {"params": {"epochs": 4}},
}


def _cheap_detector(default):
    names = {f.name for f in dataclasses.fields(type(default))}
    return type(default)(**{k: v for k, v in {"epochs": 3, "batches_per_epoch": 3}.items() if k in names})


def _build(registry, name, settings):
    cls = registry[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in CHEAP.items() if k in fields}
    det = fields.get("detector")
    if det is not None and det.default_factory is not dataclasses.MISSING:
        kw["detector"] = _cheap_detector(det.default_factory())
    kw.update(settings["params"])
    return cls(**kw)


def filter_settings(name):
    return {**FILTER_DEFAULT, **FILTER_OVERRIDES.get(name, {})}


def purifier_settings(name):
    return {**PURIFIER_DEFAULT, **PURIFIER_OVERRIDES.get(name, {})}


@pytest.fixture(scope="module")
def data(digits):
    train, test = digits
    xtr, _ = as_tensors(train)
    pool = xtr[torch.randperm(len(xtr), generator=gen(3))[:400]]
    return pool, as_tensors(test)


def _snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])


def _same(model, snap) -> bool:
    state, grads, modes = snap
    return (all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
            and grads == [p.requires_grad for p in model.parameters()]
            and modes == [m.training for m in model.modules()])


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def _nan_field(cls):
    for f in dataclasses.fields(cls):
        if f.init and type(f.default) is float:
            return f.name
    return None


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filter_contract(name, data, badnets, handwired):
    pool, (xte, yte) = data
    s = filter_settings(name)
    flt = _build(FILTERS, name, s)
    assert isinstance(flt, InputFilter)
    bd, twin, htrig, htarget = handwired
    models = {"badnets": (badnets[0], badnets[1].trigger, badnets[1].target), "handwired": (bd, htrig, htarget)}
    for which in s["models"]:
        model, trig, target = models[which]
        snap, hooks = _snapshot(model), _hooks(model)
        guard = Guard.calibrate(flt, model, pool, fpr=FPR)
        stamped = trig.apply(xte[yte != target])
        scores = guard.scores(stamped)
        assert scores.shape == (len(stamped),) and scores.dtype.is_floating_point
        tpr = float((scores > guard.threshold).float().mean())
        assert tpr >= s["min_tpr"], f"{name} flags {tpr:.1%} of {which} stamped inputs"
        assert torch.equal(scores, guard.scores(stamped)), f"{name} is not deterministic"
        assert _same(model, snap) and _hooks(model) == hooks
    guard = Guard.calibrate(flt, twin, pool, fpr=FPR)                  # clean twin
    frr = float(guard(xte).flagged.float().mean())
    assert frr <= FPR + 3 * math.sqrt(FPR * (1 - FPR) / len(xte)), f"{name} flags {frr:.1%} of clean inputs"
    bad = _nan_field(FILTERS[name])
    if bad:
        with pytest.raises(ValueError, match=bad):
            FILTERS[name](**{bad: float("nan")})


def _ready(purifier, model, pool, seed):
    if callable(getattr(purifier, "fit", None)):
        return purifier.fit(model, pool, generator=gen(seed))
    return purifier


@pytest.mark.parametrize("name", sorted(PURIFIERS))
def test_purifier_contract(name, data, badnets):
    pool, (xte, yte) = data
    s = purifier_settings(name)
    model, goal, _ = badnets
    snap, hooks = _snapshot(model), _hooks(model)
    p = _build(PURIFIERS, name, s)
    assert isinstance(p, Purifier)
    ready = _ready(p, model, pool, 0)
    assert isinstance(ready, Purifier)
    x = xte[:200]
    out = ready.purify(model, x)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, _ready(p, model, pool, 0).purify(model, x)), f"{name} is not deterministic"
    assert _same(model, snap) and _hooks(model) == hooks
    if s["max_asr"] is not None:
        keep = yte != goal.target
        asr = float((predict(model, ready.purify(model, goal.apply(xte[keep]))) == goal.target).float().mean())
        assert asr <= s["max_asr"], f"{name}: ASR {asr:.1%} after purification"
    bad = _nan_field(PURIFIERS[name])
    if bad:
        with pytest.raises(ValueError, match=bad):
            PURIFIERS[name](**{bad: float("nan")})
