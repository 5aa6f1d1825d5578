"""Per-position decision procedure of the freeness verifier (see ``freeness`` for the maths)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from . import _lp
from .bounds import PAD, ReluNet, crown_bounds
from .region import TriggerRegion

BOX_PAD = 1e-14  # relative outward rounding of the normalised trigger box


@dataclass
class FirstLayer:
    """z_1 = c + A t for one position: c (K, n_1) with round-off <= c_err, A (n_1, s), box [tl, th]."""

    c: torch.Tensor
    c_err: torch.Tensor
    A: torch.Tensor
    tl: torch.Tensor
    th: torch.Tensor
    idx: torch.Tensor
    mean: torch.Tensor  # (s,) normalisation of the trigger pixels
    std: torch.Tensor

    def to_pixels(self, t: np.ndarray | torch.Tensor, region: TriggerRegion) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(t, np.float64))
        return (t * self.std + self.mean).clamp(region.lo, region.hi)


class FirstLayers:
    """z_1 of every image without the trigger pixels: c = W_1 v + b_1 - W_1[:, S] v[S], with the
    round-off bounded by ``c_err`` = PAD (1 + |W_1| |v| + |b_1|) (one product for all positions)."""

    def __init__(self, net: ReluNet, X: torch.Tensor):
        self.net = net
        self.v = net.normalise(X)
        w, b = net.weights[0], net.biases[0]
        self.full = self.v @ w.T + b
        self.err = PAD * (1.0 + self.v.abs() @ w.abs().T + b.abs())

    def at(self, region: TriggerRegion, rows=None) -> FirstLayer:
        net, idx = self.net, region.indices
        v, full, err = (self.v, self.full, self.err) if rows is None else (self.v[rows], self.full[rows], self.err[rows])
        w = net.weights[0]
        A = w[:, idx].contiguous()
        c = full - v[:, idx] @ A.T
        mean, std = net.mean[idx], net.std[idx]
        tl = (region.lo - mean) / std
        th = (region.hi - mean) / std
        tl, th = tl - tl.abs() * BOX_PAD, th + th.abs() * BOX_PAD
        return FirstLayer(c, err, A, tl, th, idx, mean, std)


def first_layer(net: ReluNet, X: torch.Tensor, region: TriggerRegion) -> FirstLayer:
    return FirstLayers(net, X).at(region)


def bounds_for(net: ReluNet, fls: list[FirstLayer], boxes=None, targets=None):
    """CROWN bounds for several positions (same |S|) x their K images, as one ``Bounds`` batch."""
    K = fls[0].c.shape[0]
    c = torch.cat([f.c for f in fls])
    ce = torch.cat([f.c_err for f in fls])
    A = torch.cat([f.A.expand(K, *f.A.shape) for f in fls])
    if boxes is None:
        boxes = [(f.tl, f.th) for f in fls]
    tl = torch.cat([b[0].expand(K, -1) for b in boxes])
    th = torch.cat([b[1].expand(K, -1) for b in boxes])
    return crown_bounds(net, c, A, tl, th, ce, targets=targets)


def crown_scan(net: ReluNet, first: FirstLayers, regions: list[TriggerRegion], rows: dict[int, list[int]],
               batch: int = 1500) -> dict[int, list[bool]]:
    """Which (target, position) pairs one image alone refutes: ub(z_t - z_j) < 0 for some j.

    Images are tried in growing groups (1, 1, 2, 4, ...) and only on positions still undecided, so a
    clean network costs about one image's bounds per position whatever |X| is."""
    refuted = {t: [False] * len(regions) for t in rows}
    K = first.v.shape[0]
    order, groups, size = list(range(K)), [], 1
    while order:
        groups.append(order[:size])
        order = order[size:]
        size = size if len(groups) < 2 else 2 * size
    for grp in groups:
        need = []
        for p in range(len(regions)):
            ts = [t for t in rows if not refuted[t][p] and set(grp) & set(rows[t])]
            if ts:
                need.append((p, ts))
        if not need:  # this group holds no image of a live target (e.g. all of the target class)
            if all(all(v) for v in refuted.values()):
                break
            continue
        step = max(1, batch // len(grp))
        for s0 in range(0, len(need), step):
            part = need[s0:s0 + step]
            ts = sorted({t for _, tl in part for t in tl})
            fls = [first.at(regions[p], grp) for p, _ in part]
            for sub in _same_size(list(range(len(part))), fls):
                bd = bounds_for(net, [fls[i] for i in sub], targets=ts)
                d = bd.diff_upper.reshape(len(sub), len(grp), len(ts), -1)
                for q, i in enumerate(sub):
                    p = part[i][0]
                    for ti, t in enumerate(ts):
                        ks = [a for a, k in enumerate(grp) if k in set(rows[t])]
                        if ks and bool((d[q, ks, ti] < 0).any()):
                            refuted[t][p] = True
    return refuted


def _same_size(ids, fls):
    by: dict[int, list[int]] = {}
    for i in ids:
        by.setdefault(fls[i].A.shape[1], []).append(i)
    return list(by.values())


def refuted_by_bounds(diff_upper: torch.Tensor, target: int) -> bool:
    """Some image alone cannot reach the target (``diff_upper`` computed for [target])."""
    return bool((diff_upper[:, 0, :] < 0).any())


def margins(model, net: ReluNet, X: torch.Tensor, region: TriggerRegion, values: torch.Tensor,
            target: int) -> float:
    """Smallest target margin z_t - max_{j != t} z_j over X, in the model's own forward pass AND in
    float64 (the smaller of the two)."""
    xs = region.stamp(X, values)
    p = next(model.parameters())
    with torch.no_grad():
        out = [model(xs.to(device=p.device, dtype=p.dtype)).double().cpu(), net.logits(net.normalise(xs))]
    m = float("inf")
    for z in out:
        other = z.clone()
        other[:, target] = -float("inf")
        m = min(m, float((z[:, target] - other.amax(1)).min()))
    return m


def attack(model, X: torch.Tensor, region: TriggerRegion, target: int, steps: int, restarts: int,
           g: torch.Generator, start: torch.Tensor | None = None) -> torch.Tensor:
    """PGD on t (pixel space, projected on [lo, hi]) maximising sum_k min(margin_k, 0.1), with
    random restarts; returns the best t (min margin over X largest)."""
    p = next(model.parameters())
    idx = region.indices.to(p.device)
    K, s = X.shape[0], region.size
    t = region.lo + (region.hi - region.lo) * torch.rand(restarts, s, generator=g, dtype=torch.float64)
    if start is not None:
        t[0] = start
    t = t.to(device=p.device, dtype=p.dtype)
    base = X.to(device=p.device, dtype=p.dtype).reshape(1, K, -1)
    best, best_m = t[0].clone(), -float("inf")
    step = 0.25 * (region.hi - region.lo)
    for it in range(steps + 1):
        t = t.detach().requires_grad_(True)
        xs = base.expand(restarts, -1, -1).clone()
        xs[:, :, idx] = t[:, None, :]
        z = model(xs.reshape(restarts * K, *X.shape[1:])).reshape(restarts, K, -1)
        other = z.clone()
        other[..., target] = -float("inf")
        m = z[..., target] - other.amax(-1)
        worst = m.detach().amin(1)
        r = int(worst.argmax())
        if float(worst[r]) > best_m:
            best_m, best = float(worst[r]), t[r].detach().clone()
        if it == steps or best_m > 1e-3:
            break
        (grad,) = torch.autograd.grad(m.clamp(max=0.1).sum(), t)
        a = step * (1 - it / (steps + 1))
        t = (t.detach() + a * grad.sign()).clamp(region.lo, region.hi)
    return best.detach().double().cpu().clamp(region.lo, region.hi)


def lp_at(net: ReluNet, fl: FirstLayer, lowers, uppers, target: int, *, margin: float = 0.0,
          milp: bool = False, box=None, time_limit: float = 60.0) -> _lp.Solved:
    tl, th = box if box is not None else (fl.tl, fl.th)
    enc = _lp.encode([w.numpy() for w in net.weights], [b.numpy() for b in net.biases], fl.c.numpy(),
                     fl.c_err.numpy(), fl.A.numpy(), tl.numpy(), th.numpy(),
                     [lo.numpy() for lo in lowers], [hi.numpy() for hi in uppers], target, margin, milp)
    return _lp.solve(enc, milp=milp, time_limit=time_limit)


def split_proof(v, net: ReluNet, fl: FirstLayer, target: int) -> bool:
    """Prove (P1) infeasible on the box by bisection: each piece refuted by fresh CROWN bounds or by a
    Farkas-checked LP.  False when the budget of pieces runs out."""
    stack, used = [(fl.tl.clone(), fl.th.clone())], 0
    while stack:
        used += 1
        if used > v.split_budget:
            return False
        box = stack.pop()
        b = bounds_for(net, [fl], [box], targets=[target])
        if refuted_by_bounds(b.diff_upper, target):
            continue
        s = lp_at(net, fl, b.lower, b.upper, target, box=box, time_limit=v.lp_time_limit)
        if s.status == "infeasible" and s.certified:
            continue
        d = int(torch.argmax(box[1] - box[0]))
        mid = (box[0][d] + box[1][d]) / 2
        lo_hi, hi_lo = box[1].clone(), box[0].clone()
        lo_hi[d], hi_lo[d] = mid, mid
        stack += [(box[0], lo_hi), (hi_lo, box[1])]
    return True


def decide_position(v, net, model, X, region, fl, bnd, target, g, secs):
    """LP -> concrete check -> attack -> MILP (-> split proof / margin MILP) for one position."""
    from .freeness import PositionResult

    lowers, uppers = bnd[0], bnd[1]
    tol = v.tie_tolerance
    name = region.name
    t0 = time.perf_counter()
    s = lp_at(net, fl, lowers, uppers, target, time_limit=v.lp_time_limit)
    secs["lp"] += time.perf_counter() - t0
    if s.status == "infeasible" and s.certified:
        return PositionResult(name, "verified", "lp")
    best, best_m = None, -float("inf")
    if s.status == "feasible":
        best = fl.to_pixels(s.t, region)
        best_m = margins(model, net, X, region, best, target)
        if best_m > tol:
            return PositionResult(name, "falsified", "lp", best_m, best)
    if v.attack_steps > 0 and s.status != "infeasible":
        t0 = time.perf_counter()
        cand = attack(model, X, region, target, v.attack_steps, v.attack_restarts, g, best)
        m = margins(model, net, X, region, cand, target)
        secs["attack"] += time.perf_counter() - t0
        if m > best_m:
            best, best_m = cand, m
        if m > tol:
            return PositionResult(name, "falsified", "attack", m, cand)
    if not v.milp:
        return PositionResult(name, "unknown", "lp", best_m if best is not None else None, best)
    t0 = time.perf_counter()
    s = lp_at(net, fl, lowers, uppers, target, milp=True, time_limit=v.milp_time_limit)
    secs["milp"] += time.perf_counter() - t0
    if s.status == "infeasible":
        t0 = time.perf_counter()
        ok = split_proof(v, net, fl, target)
        secs["split"] += time.perf_counter() - t0
        return PositionResult(name, "verified" if ok else "unknown", "split" if ok else "milp")
    if s.status != "feasible":
        return PositionResult(name, "unknown", "milp-" + s.status)
    cand = fl.to_pixels(s.t, region)
    m = margins(model, net, X, region, cand, target)
    if m > tol:
        return PositionResult(name, "falsified", "milp", m, cand)
    t0 = time.perf_counter()
    s2 = lp_at(net, fl, lowers, uppers, target, milp=True, margin=4 * tol, time_limit=v.milp_time_limit)
    secs["milp"] += time.perf_counter() - t0
    if s2.status == "feasible":
        c2 = fl.to_pixels(s2.t, region)
        m2 = margins(model, net, X, region, c2, target)
        if m2 > tol:
            return PositionResult(name, "falsified", "milp-margin", m2, c2)
        return PositionResult(name, "unknown", "milp-margin", m2, c2)
    if s2.status == "infeasible":
        return PositionResult(name, "boundary", "milp", m, cand)
    return PositionResult(name, "unknown", "milp-margin-" + s2.status, m, cand)
