"""I-BAU: the implicit hypergradient of eq. (4) equals the finite-difference derivative of
ψ(θ) = H(δ*(θ), θ) on a problem whose inner optimum is unique, and differs from the plain
adversarial-training gradient ∇_θ H."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoorlab.data import clean_subset
from backdoorlab.defenses.mitigate import IBAU
from backdoorlab.defenses.mitigate.i_bau import (UniversalShift, implicit_hypergradient, inner_objective,
                                                 universal_perturbation)
from backdoorlab.models import build


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Linear(nn.Module):
    def __init__(self, d: int, k: int, g: torch.Generator):
        super().__init__()
        self.w = nn.Parameter(0.5 * torch.randn(k, d, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(0.1 * torch.randn(k, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


ALPHA, REG = 0.2, 1.0  # 2·REG exceeds the largest curvature of the CE term: g is strongly convex


def delta_star(model, x, y):
    """The unique minimiser of g(δ, θ) (eq. 2), by iterating Φ to its fixed point."""
    d = torch.zeros(1, *x.shape[1:], dtype=x.dtype)
    for _ in range(300):
        d.requires_grad_(True)
        gr = torch.autograd.grad(inner_objective(model, d, x, y, REG), d)[0]
        d = (d - ALPHA * gr).detach()
    return d


def psi(model, x, y):
    d = delta_star(model, x, y)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x + d), y))


def test_implicit_hypergradient_matches_finite_differences():
    g = gen(0)
    x = torch.rand(12, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    model = Linear(4, 3, g)
    params = list(model.parameters())
    d = delta_star(model, x, y)
    grads, _ = implicit_hypergradient(model, params, d, x, y, torch.ones(12, dtype=torch.float64),
                                      alpha=ALPHA, reg=REG, K=150)
    u = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    eps = 1e-5
    with torch.no_grad():
        for p, v in zip(params, u):
            p.add_(eps * v)
    up = psi(model, x, y)
    with torch.no_grad():
        for p, v in zip(params, u):
            p.sub_(2 * eps * v)
    down = psi(model, x, y)
    with torch.no_grad():
        for p, v in zip(params, u):
            p.add_(eps * v)
    fd = (up - down) / (2 * eps)
    implicit = sum(float((gr * v).sum()) for gr, v in zip(grads, u))
    assert abs(implicit - fd) < 1e-5 * max(1.0, abs(fd))
    # plain adversarial training drops the implicit term and gets a different direction
    delta = d.clone().requires_grad_(False)
    out = nn.functional.cross_entropy(model(x + delta), y)
    plain = torch.autograd.grad(out, params)
    plain_dir = sum(float((gr * v).sum()) for gr, v in zip(plain, u))
    assert abs(plain_dir - fd) > 100 * abs(implicit - fd)


def test_universal_perturbation_stays_in_the_ball(badnets, digits):
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=5, generator=gen(0))
    d = universal_perturbation(model, clean.x, clean.y, steps=5, lr=10.0, reg=1e-3, epsilon=1.5,
                               batch_size=20, generator=gen(1))
    assert d.shape == (1, *clean.x.shape[1:]) and float(d.norm()) <= 1.5 + 1e-5
    with torch.no_grad():  # it is an ascent direction for the loss
        base = nn.functional.cross_entropy(model(clean.x), clean.y)
        assert nn.functional.cross_entropy(model(clean.x + d), clean.y) > base


def test_restarts_keep_the_start_with_the_highest_loss(badnets, digits):
    """restarts: the first start is the single-start solve (same generator stream), the kept δ is the
    one with the largest clean loss, so it is never worse than the single start, and stays in the ball."""
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=5, generator=gen(0))
    kw = dict(steps=3, lr=10.0, reg=1e-3, epsilon=1.5, batch_size=20)
    one = universal_perturbation(model, clean.x, clean.y, generator=gen(1), **kw)
    again = universal_perturbation(model, clean.x, clean.y, generator=gen(1), **kw)
    many = universal_perturbation(model, clean.x, clean.y, generator=gen(1), restarts=4, **kw)
    assert torch.equal(one, again) and float(many.norm()) <= 1.5 + 1e-5
    with torch.no_grad():
        loss = lambda d: float(nn.functional.cross_entropy(model(clean.x + d), clean.y))  # noqa: E731
        assert loss(many) >= loss(one) - 1e-6


@pytest.mark.parametrize("arch, shape", [("digits-cnn", None), ("badnets-cnn", (3, 32, 32))])
def test_universal_shift_is_exact(arch, shape, badnets, digits):
    """The split forward (stem + conv1 of δ, then the rest) equals model(x + c·δ), and the
    hypergradient through it equals the one through the plain forward (the model wrapped in a
    Sequential takes the plain path)."""
    if arch == "digits-cnn":
        model, x = badnets[0], clean_subset(digits[0], per_class=3, generator=gen(0)).x
    else:
        model = build(arch, input_shape=shape, num_classes=10, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
        x = torch.rand(30, *shape, generator=gen(0))
    y = torch.arange(len(x)) % 10
    net = UniversalShift(model)
    assert net.first is not None and UniversalShift(nn.Sequential(model)).first is None
    delta = torch.randn(1, *x.shape[1:], generator=gen(2))
    carries = (torch.rand(len(x), generator=gen(3)) < 0.5).float()
    with torch.no_grad():
        ref = model(x + carries.view(-1, 1, 1, 1) * delta)
        assert torch.allclose(net(x, delta, carries), ref, atol=1e-5, rtol=1e-5)
        assert torch.allclose(net(x, delta), model(x + delta), atol=1e-5, rtol=1e-5)
    params = list(model.parameters())
    kw = dict(alpha=0.01, reg=1e-3, K=3)
    split, h1 = implicit_hypergradient(model, params, delta, x, y, carries, **kw)
    plain, h2 = implicit_hypergradient(nn.Sequential(model), params, delta, x, y, carries, **kw)
    assert torch.allclose(h1, h2, atol=1e-5)
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(split, plain)) ** 0.5
    assert num <= 1e-4 * sum(float(b.pow(2).sum()) for b in plain) ** 0.5


@pytest.mark.parametrize("field, value", [("perturbed_fraction", 0.0), ("fixed_point_steps", 0),
                                          ("min_outer_steps", 0), ("uap_restarts", 0),
                                          ("restart_steps", -1), ("restart_steps", 2.5)])
def test_fields_are_checked(field, value):
    with pytest.raises(ValueError, match=f"IBAU.{field}"):
        IBAU(**{field: value})


def test_restart_steps_shorten_only_the_random_starts(badnets, digits):
    """restart_steps = steps is the plain multi-start solve; the repair's step count (progress
    total) is uap_steps for the start from 0 plus restart_steps for each random start, per round."""
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=6, generator=gen(0))
    kw = dict(steps=3, lr=10.0, reg=1e-3, epsilon=1.5, batch_size=20, restarts=3)
    a = universal_perturbation(model, clean.x, clean.y, generator=gen(1), **kw)
    b = universal_perturbation(model, clean.x, clean.y, generator=gen(1), restart_steps=3, **kw)
    c = universal_perturbation(model, clean.x, clean.y, generator=gen(1), restart_steps=1, **kw)
    assert torch.equal(a, b) and float(c.norm()) <= 1.5 + 1e-5
    seen = []
    IBAU(rounds=1, min_outer_steps=1, batch_size=20, uap_steps=2, uap_restarts=3, restart_steps=1,
         fixed_point_steps=1).repair(model, clean, generator=gen(1), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (2 + 2 * 1 + 3, 2 + 2 * 1 + 3)  # 60 samples / batch 20 = 3 outer steps


def test_small_clean_sets_get_more_rounds(badnets, digits):
    """min_outer_steps: 60 samples at batch 20 are 3 steps a round; 7 steps need 3 rounds, each
    re-solving δ; a larger round count is kept as given.  The inner solver's starts are spread
    over the extra rounds (at least uap_restarts x rounds starts in all)."""
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=6, generator=gen(0))
    cheap = dict(batch_size=20, uap_steps=1, fixed_point_steps=1)
    rep = IBAU(min_outer_steps=7, **cheap).repair(model, clean, generator=gen(1))
    assert rep.summary["rounds"] == 3 and rep.summary["outer_steps"] == 9
    assert len(rep.summary["delta_norms"]) == 3
    assert rep.summary["uap_restarts"] == 3  # ceil(4 restarts x 2 rounds / 3 rounds)
    rep = IBAU(rounds=4, min_outer_steps=7, **cheap).repair(model, clean, generator=gen(1))
    assert rep.summary["rounds"] == 4 and rep.summary["outer_steps"] == 12
    assert rep.summary["uap_restarts"] == 4
