"""Soundness of problem 1 over random small networks and trigger specs.

For every case: no ``verified`` answer is contradicted by a strong search (PGD with restarts from
random starts and the box's corners, plus dense random sampling of the trigger box), every
``falsified`` trigger flips all of X in a fresh forward pass, and the bounds contain every sampled
activation.  The default run checks 150 cases; ``-m slow`` runs 600."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoorlab.certify.bounds import crown_bounds, interval_bounds, relu_network
from backdoorlab.certify.freeness import FreenessVerifier, TriggerRegion
from backdoorlab.certify._search import FirstLayers

VERIFIER = FreenessVerifier(milp_time_limit=10.0, attack_steps=30, attack_restarts=4, split_budget=32)


def random_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    ri = lambda a, b: int(torch.randint(a, b + 1, (1,), generator=g))  # noqa: E731
    d, n_cls = ri(2, 5), ri(2, 3)
    widths = [ri(2, 6) for _ in range(ri(1, 2))]
    layers, prev = [nn.Flatten()], d
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, n_cls))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
    X = torch.rand(ri(1, 4), 1, 1, d, generator=g)
    s = ri(1, min(3, d))
    pix = torch.randperm(d, generator=g)[:s]
    mask = torch.zeros(1, 1, d, dtype=torch.bool)
    mask[0, 0, pix] = True
    lo = float(torch.rand(1, generator=g)) * 0.5
    hi = lo + 0.05 + float(torch.rand(1, generator=g)) * (1 - lo - 0.05)
    return net.eval(), X, TriggerRegion(mask=mask, lo=lo, hi=hi, name=f"case{seed}"), ri(0, n_cls - 1)


def strong_search(net, X, region, target, g) -> float:
    """Largest min-over-X target margin found by sampling + PGD (independent of the verifier)."""
    s, K = region.size, X.shape[0]
    idx = region.indices
    corners = torch.cartesian_prod(*[torch.tensor([region.lo, region.hi])] * s).reshape(-1, s)
    t = torch.cat([corners, region.lo + (region.hi - region.lo) * torch.rand(2000, s, generator=g)])

    def margin(t):
        xs = X.reshape(1, K, -1).repeat(len(t), 1, 1)
        xs[:, :, idx] = t[:, None, :]
        z = net(xs.reshape(-1, *X.shape[1:])).reshape(len(t), K, -1)
        other = z.clone()
        other[..., target] = -float("inf")
        return (z[..., target] - other.amax(-1)).amin(1)

    with torch.no_grad():
        best = float(margin(t).max())
    p = t[torch.randperm(len(t), generator=g)[:8]].clone()
    for it in range(30):
        p.requires_grad_(True)
        m = margin(p)
        (grad,) = torch.autograd.grad(m.sum(), p)
        with torch.no_grad():
            best = max(best, float(m.max()))
            p = (p + 0.1 * (region.hi - region.lo) * (1 - it / 30) * grad.sign()).clamp(region.lo, region.hi)
    return best


def check_bounds(net, X, region, g):
    """Sampled activations of every layer lie in CROWN bounds; CROWN is inside IBP."""
    rn = relu_network(net, X.shape[1:])
    fl = FirstLayers(rn, X).at(region)
    K = X.shape[0]
    args = (fl.c, fl.A.expand(K, *fl.A.shape), fl.tl.expand(K, -1), fl.th.expand(K, -1), fl.c_err)
    cb, ib = crown_bounds(rn, *args), interval_bounds(rn, *args)
    t = region.lo + (region.hi - region.lo) * torch.rand(200, region.size, generator=g, dtype=torch.float64)
    for k in range(K):
        h = rn.normalise(region.stamp(X[k:k + 1].expand(200, -1, -1, -1), torch.zeros(region.size)))
        h[:, region.indices] = t
        for i, (w, b) in enumerate(zip(rn.weights, rn.biases)):
            h = h @ w.T + b
            assert (h >= cb.lower[i][k]).all() and (h <= cb.upper[i][k]).all()
            assert (cb.lower[i][k] >= ib.lower[i][k]).all() and (cb.upper[i][k] <= ib.upper[i][k]).all()
            h = h.clamp_min(0)


def run_cases(seeds):
    counts = {"verified": 0, "falsified": 0, "boundary": 0, "unknown": 0}
    g = torch.Generator().manual_seed(123)
    for seed in seeds:
        net, X, region, target = random_case(seed)
        cert = VERIFIER.certify(net, X, region, targets=target)[0]
        counts[cert.status] += 1
        if cert.status == "verified":
            found = strong_search(net, X, region, target, g)
            assert found <= 1e-5, f"seed {seed}: verified but a trigger with margin {found} exists"
        elif cert.status == "falsified":
            with torch.no_grad():
                z = net(cert.stamp(X))
            assert (z.argmax(1) == target).all(), f"seed {seed}: falsified trigger does not work"
            vals = cert.counterexample
            assert (vals >= region.lo).all() and (vals <= region.hi).all()
        if seed % 5 == 0:
            check_bounds(net, X, region, g)
    return counts


def test_soundness_random_networks_fast():
    counts = run_cases(range(150))
    assert sum(counts.values()) == 150
    assert counts["verified"] >= 20 and counts["falsified"] >= 20, counts  # both answers exercised


@pytest.mark.slow
def test_soundness_random_networks_600():
    counts = run_cases(range(1000, 1600))
    assert sum(counts.values()) == 600
    assert counts["unknown"] <= 30, counts
