"""Sphere / slab (Steinhardt et al. 2017): closed-form inner maximisation vs a generic solver; U* vs the attack."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from backdoorlab.certify.sphere_slab import (FeasibleSet, SphereSlabBound, feasible_set, hinge, poison_budget, sanitize,
                                             worst_point)


def _generic(w, y, fs):
    """min_x y<w, x> s.t. ||x - mu_y|| <= r_y, |<x - mu_y, v>| <= s_y, by SLSQP (a generic convex solver)."""
    i = int(y > 0)
    mu, r, s, v = (t.numpy() for t in (fs.mu[i], fs.r[i], fs.s[i], fs.v))
    wn = w.numpy()
    cons = [{"type": "ineq", "fun": lambda x: r * r - np.sum((x - mu) ** 2), "jac": lambda x: -2 * (x - mu)},
            {"type": "ineq", "fun": lambda x: s - (x - mu) @ v, "jac": lambda x: -v},
            {"type": "ineq", "fun": lambda x: s + (x - mu) @ v, "jac": lambda x: v}]
    best = None
    for start in (mu, mu + 0.1 * r * np.ones_like(mu) / np.sqrt(len(mu))):
        res = minimize(lambda x: y * (wn @ x), start, jac=lambda x: y * wn, constraints=cons, method="SLSQP",
                       options={"ftol": 1e-14, "maxiter": 500})
        if best is None or res.fun < best:
            best = res.fun
    return best


@pytest.mark.parametrize("seed", range(12))
def test_closed_form_inner_max_matches_generic_solver(seed):
    g = torch.Generator().manual_seed(seed)
    d = 5
    mu = torch.randn(2, d, generator=g, dtype=torch.float64)
    r = torch.rand(2, generator=g, dtype=torch.float64) + 0.5
    vnorm = float((mu[1] - mu[0]).norm())
    # alternate between an active slab (s small) and an inactive one (s large)
    s = (torch.rand(2, generator=g, dtype=torch.float64) * 0.3 + (0.05 if seed % 2 else 2.0)) * r * vnorm
    fs = FeasibleSet(mu, r, s)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    for y in (-1, 1):
        x = worst_point(w, y, fs)
        assert bool(fs.contains(x[None], torch.tensor([float(y)], dtype=torch.float64)))
        assert float(y * (w @ x)) == pytest.approx(_generic(w, y, fs), abs=1e-6)


def test_worst_point_edge_cases():
    fs = FeasibleSet(torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64),
                     torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64))
    # w parallel to v: the slab binds, x = mu + s' v^
    x = worst_point(torch.tensor([-1.0, 0.0], dtype=torch.float64), 1, fs)
    assert torch.allclose(x, torch.tensor([1.5, 0.0], dtype=torch.float64), atol=1e-8)
    # w = 0: any point is worst, the centroid is returned
    assert torch.equal(worst_point(torch.zeros(2, dtype=torch.float64), 1, fs), fs.mu[1])


def _digits_1_7(digits):
    train, _ = digits
    sel = (train.y == 1) | (train.y == 7)
    return train.x[sel].flatten(1).double(), torch.where(train.y[sel] == 7, 1.0, -1.0).double()


def test_upper_bound_dominates_the_candidate_attack_on_every_eps(digits):
    x, y = _digits_1_7(digits)
    b = SphereSlabBound(rho=2.0, eta=0.05, iterations=300)
    fs = feasible_set(x, y, 0.7)
    for eps in (0.0, 0.1, 0.3):
        bound = b.certify(x, y, eps, fs=fs)
        traj = bound.trajectory
        assert bool((traj[1:] <= traj[:-1]).all())                 # U* is non-increasing
        assert len(bound.attack_y) == poison_budget(eps, len(y))
        assert bool(fs.contains(bound.attack_x, bound.attack_y).all())  # every poison passes the oracle F
        r = b.attack_through_defense(x, y, bound, fs)
        assert r["poison_kept"] == r["poison_total"]
        assert r["achieved_objective"] <= bound.upper + 1e-9
        # and the objective at the learner's theta on all clean + all poison is itself below U*
        full = float(hinge(r["theta"], x, y).mean()) + (eps * float(hinge(r["theta"], bound.attack_x, bound.attack_y).mean())
                                                        if len(bound.attack_y) else 0.0)
        assert full >= r["achieved_objective"] - 1e-9
        # the exact quantity U* bounds: every clean point kept, the poison filtered by F
        rc = b.attack_through_defense(x, y, bound, fs, keep_clean=True)
        assert rc["clean_removed"] == 0 and rc["poison_kept"] == rc["poison_total"]
        assert r["achieved_objective"] - 1e-9 <= rc["achieved_objective"] <= bound.upper + 1e-9


def _svm_interval(x, y, weight, rho):
    """[lower, upper] around min_{||theta|| <= rho} sum_i weight_i hinge_i(theta), theta = (w, b), independent of the
    library's learner: the dual max_{0 <= a <= weight} sum a - rho ||sum a_i y_i (x_i, 1)|| (any feasible a is a
    lower bound), solved by L-BFGS-B; the primal at theta = rho g / ||g|| is an upper bound."""
    A = (y[:, None] * torch.cat([x, torch.ones(len(y), 1, dtype=torch.float64)], 1)).numpy()
    wn = weight.numpy()

    def negdual(a):
        g = A.T @ a
        gn = np.linalg.norm(g)
        return -(a.sum() - rho * gn), -(1.0 - rho * (A @ g) / gn)

    res = minimize(negdual, wn / 2, jac=True, method="L-BFGS-B", bounds=[(0.0, wi) for wi in wn],
                   options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-12})
    a = np.clip(res.x, 0.0, wn)
    g = A.T @ a
    lower = a.sum() - rho * np.linalg.norm(g)
    upper = float(np.maximum(0.0, 1.0 - A @ (rho * g / np.linalg.norm(g))) @ wn)
    return lower, upper


def test_poison_budget_is_the_floor_of_eps_n():
    assert poison_budget(0.01, 252) == 2            # 2.52 points: a third one would weigh 3/252 > eps
    assert poison_budget(0.05, 252) == 12           # 12.6
    assert poison_budget(0.29, 100) == 29           # 0.29 * 100 = 28.999... in floats
    assert poison_budget(0.1, 13007) == 1300        # MNIST-1-7: 1300.7
    assert poison_budget(0.0, 252) == 0


def test_candidate_attack_is_within_what_U_star_bounds_on_digits(digits):
    """The finding: at eps = 0.01 on digits 1-vs-7 (n = 252, eps n = 2.52) the attack had round(2.52) = 3 points,
    weight 3/252 > eps, and its exact objective (0.019766) exceeded U* (0.019503).  The attack must stay within
    floor(eps n) points; then the exact minimum of the attacked training objective (solved here independently of
    the library's learner) is below U*, and so is the learner's objective."""
    x, y = _digits_1_7(digits)
    n = len(y)
    b = SphereSlabBound(rho=2.0, eta=0.05, iterations=600)
    fs = feasible_set(x, y, 0.7)
    for eps in (0.01, 0.3):
        bound = b.certify(x, y, eps, fs=fs)
        m = len(bound.attack_y)
        ax, ay = torch.cat([x, bound.attack_x]), torch.cat([y, bound.attack_y])
        lower, upper = _svm_interval(ax, ay, torch.full((n + m,), 1.0 / n, dtype=torch.float64), b.rho)
        assert upper - lower < 1e-6                                   # the independent solve is exact
        assert lower <= bound.upper + 1e-9                            # U* dominates the attack's true minimum
        assert m == poison_budget(eps, n) and m / n <= eps
        r = b.attack_through_defense(x, y, bound, fs, keep_clean=True)
        assert lower - 1e-9 <= r["achieved_objective"] <= bound.upper + 1e-9


def test_sanitizer_oracle_and_data_dependent(digits):
    x, y = _digits_1_7(digits)
    keep = sanitize(x, y, 0.7)
    frac = float(keep.double().mean())
    assert 0.4 < frac <= 0.7 + 1e-9                                   # both cuts at the 70th percentile
    far = x[:5] + 10.0
    assert not bool(sanitize(far, y[:5], oracle=feasible_set(x, y, 0.7)).any())


def test_invalid_fields():
    with pytest.raises(ValueError, match="SphereSlabBound.rho"):
        SphereSlabBound(rho=-1)
    with pytest.raises(ValueError, match="SphereSlabBound.quantile"):
        SphereSlabBound(quantile=0)
