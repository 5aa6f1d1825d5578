"""Sphere and slab defenses with certified upper bounds (Steinhardt, Koh & Liang, NeurIPS 2017,
"Certified Defenses for Data Poisoning Attacks"; seed 002).

Threat model: the attacker adds eps * n points to n clean points, knowing everything; the defender
removes points outside a feasible set F, then trains a linear SVM (hinge loss, ||theta||_2 <= rho).

    (2) F_sphere = {(x, y) : ||x - mu_y||_2 <= r_y},  F_slab = {(x, y) : |<x - mu_y, mu_y - mu_-y>| <= s_y}
        oracle: mu_y from the clean data; data-dependent (7): mu_y from the (poisoned) data scanned.
        r_y, s_y = the ``quantile`` of the clean (resp. scanned) points' distances, per class.
    (4) M = max_{D_p in F} min_{||theta|| <= rho} (1/n) L(theta; D_c u D_p)  (the defender's training
        objective; a test-loss bound under (i) train/test concentration and (ii) removing clean
        outliers not changing the model materially)
    Algorithm 1: z <- 0, lambda <- 1/eta, theta <- 0, U* <- inf; repeat T times:
        (x_t, y_t) = argmax_{(x, y) in F} l(theta; x, y)
        U* <- min(U*, L_c(theta) + eps * l(theta; x_t, y_t))   (each term is >= M, so U* >= M)
        g = grad L_c(theta) + eps * grad l(theta; x_t, y_t)
        z <- z - g, lambda <- max(lambda, ||z|| / rho), theta <- z / lambda
      the x_t (floor(eps * n) of them, from the later iterates) are the candidate attack.

Poison budget: U* at eps bounds every attack of at most eps * n points (each poison point weighs 1/n, and
(1/n) sum_{p <= eps n} l(theta; x_p) <= eps max_F l), so the candidate attack has floor(eps n) points.
Rounding eps n to the nearest integer instead put it outside what U* bounds: digits 1-vs-7 (n = 252)
at eps = 0.01 gave 3 points, weight 3/252 = 0.0119 > eps, and that attack's exact training objective
(0.019766, SVM solved to a zero duality gap) exceeded U* = 0.019503 (T = 600; 0.019204 at T = 10,000,
so not a convergence effect), while U* at eps = 3/252 (0.020718) covers it.

Inner maximisation in closed form: the hinge decreases in the margin, so the worst x in F_y
minimises y <w, x>, a linear objective over a ball cut by a slab: with a = -y w, v^ = v / ||v||,
s' = s / ||v||, alpha = <a, v^>, a_perp = a - alpha v^:  u = r a / ||a|| if |<u, v^>| <= s', else
u = sign(alpha) s' v^ + sqrt(r^2 - s'^2) a_perp / ||a_perp||;  x* = mu_y + u.

Deviations: theta includes a bias b (inside the rho-ball); the upper bound is computed for the
oracle F only (the data-dependent F makes the inner problem non-convex; the paper uses an SDP
relaxation, not implemented) — the data-dependent F is available as a sanitizer; the learner is
the same dual-averaging method run on the sanitized data (best iterate kept); labels are +-1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validation import in_range, positive
from ..roles import Certifier, Progress


@dataclass(frozen=True)
class FeasibleSet:
    """Per class y in (-1, +1) (index 0, 1): centroid ``mu[i]``, sphere radius ``r[i]``, slab
    half-width ``s[i]`` along v = mu_+ - mu_-."""

    mu: torch.Tensor
    r: torch.Tensor
    s: torch.Tensor

    @property
    def v(self) -> torch.Tensor:
        return self.mu[1] - self.mu[0]

    def contains(self, x: torch.Tensor, y: torch.Tensor, slack: float = 1e-9) -> torch.Tensor:
        i = (y > 0).long()
        d = x - self.mu[i]
        sphere = d.norm(dim=1) <= self.r[i] * (1 + slack)
        slab = (d @ self.v).abs() <= self.s[i] * (1 + slack)
        return sphere & slab


def feasible_set(x: torch.Tensor, y: torch.Tensor, quantile: float = 0.7) -> FeasibleSet:
    """F_sphere n F_slab fitted on (x, y): oracle when (x, y) is the clean data, data-dependent when
    it is the data being scanned.  Radii are per-class ``quantile``s of the points' own distances."""
    x, y = x.double().flatten(1), y.double()
    mu = torch.stack([x[y < 0].mean(0), x[y > 0].mean(0)])
    v = mu[1] - mu[0]
    r, s = [], []
    for i, sel in enumerate((y < 0, y > 0)):
        d = x[sel] - mu[i]
        r.append(torch.quantile(d.norm(dim=1), quantile))
        s.append(torch.quantile((d @ v).abs(), quantile))
    return FeasibleSet(mu, torch.stack(r), torch.stack(s))


def sanitize(x: torch.Tensor, y: torch.Tensor, quantile: float = 0.7, oracle: FeasibleSet | None = None):
    """The defense: keep the points inside F (``oracle`` given, else fitted on (x, y) itself)."""
    fs = oracle if oracle is not None else feasible_set(x, y, quantile)
    return fs.contains(x.double().flatten(1), y.double())


def worst_point(w: torch.Tensor, y: int, fs: FeasibleSet) -> torch.Tensor:
    """argmin over x in F_y of y <w, x> (closed form above), pulled 1e-9 inside F."""
    i = int(y > 0)
    a = -float(y) * w.double()
    r, vn = float(fs.r[i]), fs.v.norm()
    if float(a.norm()) == 0.0:
        return fs.mu[i].clone()
    vh = fs.v / vn
    sp = float(fs.s[i] / vn)
    u = r * a / a.norm()
    if float((u @ vh).abs()) > sp:
        alpha = float(a @ vh)
        perp = a - alpha * vh
        pn = float(perp.norm())
        u = (1.0 if alpha >= 0 else -1.0) * sp * vh
        if pn > 0 and r > sp:
            u = u + (r * r - sp * sp) ** 0.5 * perp / pn
    return fs.mu[i] + u * (1 - 1e-9)


def poison_budget(eps: float, n: int) -> int:
    """The number of poison points an eps-fraction attacker may add to n clean points: floor(eps n)
    (1e-9 absorbs float error such as 0.29 * 100 = 28.999...).  U* at eps bounds every attack this size;
    one more point would weigh more than eps."""
    return math.floor(eps * n + 1e-9)


def hinge(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-point hinge loss max(0, 1 - y (<w, x> + b)), theta = (w, b)."""
    return (1 - y * (x @ theta[:-1] + theta[-1])).clamp_min(0)


def _hinge_grad(theta, x, y, weight):
    """Gradient of sum_i weight_i * hinge_i with respect to theta = (w, b)."""
    active = ((1 - y * (x @ theta[:-1] + theta[-1])) > 0).double() * weight * y
    return -torch.cat([active @ x, active.sum()[None]])


@dataclass(frozen=True)
class PoisoningBound:
    """Algorithm 1's output for one eps: ``upper`` = U* (>= M); ``attack_x``/``attack_y`` the
    candidate attack (``poison_budget(eps, n)`` = floor(eps n) points, the most U* covers);
    ``trajectory`` = U* after each iteration."""

    eps: float
    upper: float
    attack_x: torch.Tensor
    attack_y: torch.Tensor
    trajectory: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class SphereSlabBound(Certifier):
    """rho = radius of the parameter ball; eta = step size (lambda_0 = 1/eta); iterations = T;
    quantile = the feasible set's radii quantile (0.7 in the paper's figures); learner_iterations /
    learner_eta = the defender's learner (0 = 4 T): it must get close to its minimum, or the
    achieved objective it reports overstates min_theta (measured: 2 T steps at eta 0.05 stayed
    1e-3 relative above U* on digits 1-vs-7 where 4 T at 0.2 is below)."""

    rho: float = 2.0
    eta: float = 0.05
    iterations: int = 2000
    quantile: float = 0.7
    learner_iterations: int = 0
    learner_eta: float = 0.2

    def __post_init__(self) -> None:
        positive("SphereSlabBound", "rho", self.rho)
        positive("SphereSlabBound", "eta", self.eta)
        positive("SphereSlabBound", "iterations", self.iterations, integer=True)
        positive("SphereSlabBound", "learner_iterations", self.learner_iterations, integer=True, allow_zero=True)
        positive("SphereSlabBound", "learner_eta", self.learner_eta)
        in_range("SphereSlabBound", "quantile", self.quantile, 0, 1, lo_open=True)

    def certify(self, x: torch.Tensor, y: torch.Tensor, eps: float, *, fs: FeasibleSet | None = None,
                progress: Progress = None) -> PoisoningBound:
        """Algorithm 1 on clean data (x, y in {-1, +1}) against an eps fraction of poison."""
        in_range("SphereSlabBound", "eps", eps, 0, 1)
        x, y = x.double().flatten(1), y.double()
        fs = fs or feasible_set(x, y, self.quantile)
        n, d = x.shape
        theta = torch.zeros(d + 1, dtype=torch.float64)
        z = torch.zeros_like(theta)
        lam, upper = 1.0 / self.eta, float("inf")
        traj, xs, ys = [], [], []
        ones = torch.full((n,), 1.0 / n, dtype=torch.float64)
        for t in range(self.iterations):
            cands = [(worst_point(theta[:-1], yy, fs), yy) for yy in (-1, 1)]
            losses = [float(hinge(theta, c[None], torch.tensor([float(yy)], dtype=torch.float64)))
                      for c, yy in cands]
            j = int(losses[1] > losses[0])
            xp, yp = cands[j]
            clean = float(hinge(theta, x, y).mean())
            upper = min(upper, clean + eps * losses[j])
            traj.append(upper)
            xs.append(xp)
            ys.append(float(yp))
            g = _hinge_grad(theta, x, y, ones) + eps * _hinge_grad(
                theta, xp[None], torch.tensor([float(yp)], dtype=torch.float64), torch.ones(1, dtype=torch.float64))
            z = z - g
            lam = max(lam, float(z.norm()) / self.rho)
            theta = z / lam
            if progress is not None:
                progress(t + 1, self.iterations)
        m = poison_budget(eps, n)
        late = torch.linspace(self.iterations // 2, self.iterations - 1, max(m, 1)).round().long()[:m]
        ax = torch.stack(xs)[late] if m else torch.zeros(0, d, dtype=torch.float64)
        ay = torch.tensor(ys, dtype=torch.float64)[late] if m else torch.zeros(0, dtype=torch.float64)
        return PoisoningBound(float(eps), upper, ax, ay, torch.tensor(traj))

    def train(self, x: torch.Tensor, y: torch.Tensor, n_clean: int, iterations: int | None = None):
        """The defender's learner: min_{||theta|| <= rho} (1/n_clean) sum hinge over (x, y), by the
        same dual averaging (best iterate).  Returns (theta, achieved objective)."""
        x, y = x.double().flatten(1), y.double()
        w = torch.full((len(y),), 1.0 / n_clean, dtype=torch.float64)
        theta = torch.zeros(x.shape[1] + 1, dtype=torch.float64)
        z, lam = torch.zeros_like(theta), 1.0 / self.learner_eta
        best, best_theta = float("inf"), theta
        for _ in range(iterations or self.learner_iterations or 4 * self.iterations):
            obj = float(hinge(theta, x, y) @ w)
            if obj < best:
                best, best_theta = obj, theta
            z = z - _hinge_grad(theta, x, y, w)
            lam = max(lam, float(z.norm()) / self.rho)
            theta = z / lam
        return best_theta, best

    def attack_through_defense(self, x, y, bound: PoisoningBound, fs: FeasibleSet | None = None,
                               data_dependent: bool = False, keep_clean: bool = False) -> dict:
        """Run the candidate attack through the real pipeline: sanitize D_c u D_p (oracle F, or F
        refitted on the poisoned data), train, and report the achieved training objective.
        ``keep_clean``: the sanitizer filters the poison only (every clean point kept) — the exact
        quantity U* bounds, min_theta (1/n) L(theta; D_c u (D_p n F)), without assumption (ii)."""
        x, y = x.double().flatten(1), y.double()
        fs = fs or feasible_set(x, y, self.quantile)
        ax, ay = torch.cat([x, bound.attack_x]), torch.cat([y, bound.attack_y])
        keep = sanitize(ax, ay, self.quantile, None if data_dependent else fs)
        if keep_clean:
            keep[:len(y)] = True
        theta, objective = self.train(ax[keep], ay[keep], len(y))
        n = len(y)
        return {"eps": bound.eps, "upper": bound.upper, "achieved_objective": objective, "theta": theta,
                "poison_kept": int(keep[n:].sum()), "poison_total": len(bound.attack_y),
                "clean_removed": int((~keep[:n]).sum())}


__all__ = ["FeasibleSet", "feasible_set", "sanitize", "worst_point", "hinge", "poison_budget",
           "SphereSlabBound", "PoisoningBound"]
