"""Poison Frogs: Algorithm 1 against its literal transcription, clean labels, feature collision."""
import math

import pytest
import torch

from backdoorlab.attacks import ATTACKS, PoisonFrogs
from backdoorlab.metrics import attack_success_rate
from backdoorlab.types import InstanceGoal


def test_registered():
    assert ATTACKS["poison-frogs"] is PoisonFrogs


def test_one_iteration_is_forward_then_backward_step(clean_model, digits):
    train, test = digits
    t, b = test.x[0], train.x[train.y == 3][0]
    a = PoisonFrogs(target_x=t, target_label=3, lr=0.01, steps=1, beta0=0.25)
    beta = 0.25 * 128 ** 2 / 64 ** 2                                     # β0 · D_f² / D_x²
    assert a.beta(clean_model, b[None]) == pytest.approx(beta)
    x = b[None].clone().requires_grad_(True)
    lp = ((clean_model.features(x) - clean_model.features(t[None]).detach()) ** 2).sum()
    (g,) = torch.autograd.grad(lp, x)
    xh = b[None] - 0.01 * g                                              # forward step
    expected = ((xh + 0.01 * beta * b[None]) / (1 + beta * 0.01)).clamp(0, 1)   # backward step
    assert torch.allclose(a.craft(clean_model, t[None], b[None]), expected, atol=1e-6)


def test_watermark_is_the_starting_base(clean_model, digits):
    train, test = digits
    t, b = test.x[:1], train.x[:1]
    a = PoisonFrogs(target_x=t, target_label=0, opacity=0.3, steps=1, lr=1e-12)
    assert torch.allclose(a.craft(clean_model, t, b), 0.7 * b + 0.3 * t, atol=1e-5)


def test_poison_is_clean_label_and_collides(clean_model, digits):
    train, test = digits
    t_idx = int(torch.nonzero(test.y == 8)[0])
    a = PoisonFrogs(target_x=test.x[t_idx], target_label=3, num_poisons=2, steps=150)
    p = a.poison(train, model=clean_model, generator=torch.Generator().manual_seed(0))
    assert isinstance(p.goal, InstanceGoal) and p.goal.target == 3
    idx = p.poison_indices
    assert len(idx) == 2 and bool((train.y[idx] == 3).all())
    x, y = p.dataset.tensors()
    assert torch.equal(y, train.y)                                         # clean label: no label changed
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(x[keep], train.x[keep]) and not torch.equal(x[idx], train.x[idx])
    with torch.no_grad():
        ft = clean_model.features(test.x[t_idx:t_idx + 1])
        d_base = (clean_model.features(train.x[idx]) - ft).norm(dim=1)
        d_poison = (clean_model.features(x[idx]) - ft).norm(dim=1)
    assert bool((d_poison < 0.5 * d_base).all())
    # the metric handles InstanceGoal: the clean model classifies the target as 8, not 3
    assert attack_success_rate(clean_model, p.goal) == 0.0


def test_closest_bases_are_nearest_in_feature_space(clean_model, digits):
    train, test = digits
    a = PoisonFrogs(target_x=test.x[0], target_label=5, num_poisons=3)
    idx = a.choose_bases(clean_model, train.x, train.y)
    with torch.no_grad():
        d = (clean_model.features(train.x) - clean_model.features(test.x[:1])).norm(dim=1)
    d[train.y != 5] = float("inf")
    assert sorted(idx.tolist()) == sorted(d.topk(3, largest=False).indices.tolist())


@pytest.mark.parametrize("kw, name", [({"beta0": 0.0}, "PoisonFrogs.beta0"), ({"opacity": 1.0}, "PoisonFrogs.opacity"),
                                      ({"lr": math.nan}, "PoisonFrogs.lr"), ({"target_label": -2}, "PoisonFrogs.target_label"),
                                      ({"base_selection": "any"}, "PoisonFrogs.base_selection")])
def test_invalid_fields_named(kw, name):
    args = {"target_x": torch.zeros(1, 8, 8), "target_label": 1, **kw}
    with pytest.raises(ValueError, match=name):
        PoisonFrogs(**args)


def test_needs_model(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="model="):
        PoisonFrogs(target_x=train.x[0], target_label=1).poison(train)
