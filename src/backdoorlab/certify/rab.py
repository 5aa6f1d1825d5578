"""RAB: provable robustness against backdoors by smoothing the training process (Weber, Xu, Karlas,
Zhang, Li, IEEE S&P 2023, arXiv 2003.08904).  Binary tasks, labels {0, 1}.

Threat model: the attacker perturbs training features and plants a test-time trigger; the certificate
holds for any joint perturbation (poisoned training features, test trigger) of L2 norm < R.

    (1) for m = 1..N_m: draw fixed noise eps_m ~ N(0, sigma^2 I) for every training sample and the
        test input, train h_m on {(x_i + eps_{m,i}, y_i)}, evaluate h_m(x + eps_m)
    (2) p_c = E_m[soft output for class c],  p_A_lower = p^_A - sqrt(ln(1/alpha) / (2 N_m)),
        p_B_upper = p^_B + sqrt(ln(1/alpha) / (2 N_m))                        (Hoeffding)
    (3) R = sigma / 2 * (Phi^-1(p_A_lower) - Phi^-1(p_B_upper)); certified when R > 0
    (4) exact 1-NN: with noise only on the training points, D_i^2 / sigma^2 ~ chi'^2(d, ||x - x_i||^2
        / sigma^2) independently, so P[nearest has label c] is an integral we bound from both sides
        on a grid of squared distances t_0 < ... < t_G:
        sum_l P[D_i^2 in [t_l, t_l+1)] prod_{j != i} P[D_j^2 >= t_l+1]  <=  P[i nearest]
                                                   <=  sum_l P[D_i^2 in [t_l, t_l+1)] prod_{j != i} P[D_j^2 >= t_l]

Members are tiny (logistic regression, or one hidden layer) trained **together**: their weights are
stacked and one full-batch step updates all of them.  Deviations: N_m configurable (the reference
trains 1000 CNNs one after another; here 100 tiny models in CI); the joint statement on p_A and p_B
holds with probability 1 - 2 alpha (union bound); the 1-NN form gives deterministic bounds (no alpha).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import in_range, positive
from ..roles import Certifier, Progress
from .smoothing import ABSTAIN, RobustnessCertificate


def _radius(p_a: torch.Tensor, p_b: torch.Tensor, sigma: float) -> torch.Tensor:
    from scipy.stats import norm

    pa = np.clip(p_a.double().numpy(), 1e-12, 1 - 1e-12)
    pb = np.clip(p_b.double().numpy(), 1e-12, 1 - 1e-12)
    return torch.from_numpy(sigma / 2 * (norm.ppf(pa) - norm.ppf(pb)))


def _certificate(p1_low, p1_high, sigma, alpha, n) -> RobustnessCertificate:
    """Class 1 when its lower bound beats class 0's upper bound (1 - p1_low), and vice versa."""
    r1 = _radius(p1_low, 1 - p1_low, sigma)
    r0 = _radius(1 - p1_high, p1_high, sigma)
    pred = torch.where(r1 > 0, 1, torch.where(r0 > 0, 0, ABSTAIN)).long()
    radius = torch.where(r1 > 0, r1, torch.where(r0 > 0, r0, torch.zeros_like(r0))).float()
    p_low = torch.where(pred == 0, 1 - p1_high, p1_low).float()
    return RobustnessCertificate(pred, radius, p_low, sigma, alpha, n)


@dataclass(frozen=True, kw_only=True)
class RABEnsemble(Certifier):
    """sigma = noise; models = N_m; hidden = 0 for logistic regression, else one hidden layer;
    steps / lr = full-batch Adam per member; alpha = Hoeffding failure probability; seed = noise."""

    sigma: float = 0.5
    models: int = 100
    hidden: int = 0
    steps: int = 200
    lr: float = 0.05
    alpha: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        positive("RABEnsemble", "sigma", self.sigma)
        for f in ("models", "steps"):
            positive("RABEnsemble", f, getattr(self, f), integer=True)
        positive("RABEnsemble", "hidden", self.hidden, integer=True, allow_zero=True)
        positive("RABEnsemble", "lr", self.lr)
        in_range("RABEnsemble", "alpha", self.alpha, 0, 1, lo_open=True, hi_open=True)

    def _noise(self, shape, salt: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + salt)
        return torch.randn(shape, generator=g, dtype=torch.float32) * self.sigma

    def certify(self, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, *,
                progress: Progress = None) -> RobustnessCertificate:
        tx, ty = train_x.flatten(1).float().cpu(), train_y.float().cpu()
        if not set(ty.unique().tolist()) <= {0.0, 1.0}:
            raise ValueError("RABEnsemble.certify train_y must be binary labels in {0, 1}.")
        n, d = tx.shape
        M, H = self.models, self.hidden
        g = torch.Generator().manual_seed(self.seed)
        if H:
            params = [torch.randn(M, d, H, generator=g) / math.sqrt(d), torch.zeros(M, 1, H),
                      torch.randn(M, H, 1, generator=g) / math.sqrt(H), torch.zeros(M, 1, 1)]
        else:
            params = [torch.zeros(M, d, 1), torch.zeros(M, 1, 1)]
        train_noise = self._noise((M, n, d), 1)            # fixed per (member, sample)
        data = tx[None] + train_noise                       # (M, n, d)
        opt = torch.optim.Adam([p.requires_grad_() for p in params], lr=self.lr)
        for t in range(self.steps):
            logits = _forward(params, data).squeeze(-1)     # (M, n)
            loss = F.binary_cross_entropy_with_logits(logits, ty.expand(M, n), reduction="none").mean(1).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress is not None:
                progress(t + 1, self.steps)
        xf = x.flatten(1).float().cpu()
        test_noise = self._noise((M, 1, d), 2)              # one fixed test noise per member
        with torch.no_grad():
            p1 = torch.sigmoid(_forward([p.detach() for p in params], xf[None] + test_noise)).squeeze(-1).mean(0)
        h = math.sqrt(math.log(1 / self.alpha) / (2 * M))
        return _certificate((p1 - h).clamp(0, 1), (p1 + h).clamp(0, 1), self.sigma, self.alpha, M)


def _forward(params, x):
    if len(params) == 4:
        x = torch.relu(torch.bmm(x, params[0]) + params[1])
        return torch.bmm(x, params[2]) + params[3]
    return torch.bmm(x, params[0]) + params[1]


@dataclass(frozen=True, kw_only=True)
class RABNearestNeighbor(Certifier):
    """Exact 1-NN form of RAB: sigma = noise on the training features; grid = number of squared-
    distance buckets (more buckets = tighter bounds)."""

    sigma: float = 0.5
    grid: int = 400

    def __post_init__(self) -> None:
        positive("RABNearestNeighbor", "sigma", self.sigma)
        positive("RABNearestNeighbor", "grid", self.grid, integer=True)

    def probabilities(self, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds on P[the noisy 1-NN of x has label 1], one pair per input."""
        from scipy.stats import ncx2

        tx = train_x.flatten(1).double().cpu()
        ty = train_y.cpu().numpy().astype(bool)
        xf = x.flatten(1).double().cpu()
        d = tx.shape[1]
        s2 = self.sigma ** 2
        lows, highs = [], []
        for xi in xf:
            nc = ((tx - xi).pow(2).sum(1) / s2).numpy()                  # non-centrality per point
            near = nc.min()
            lo = ncx2.ppf(1e-9, d, near)
            hi = ncx2.ppf(1 - 1e-9, d, near)
            t = np.concatenate([[0.0], np.linspace(lo, hi, self.grid), [np.inf]])   # (G + 2,)
            logsf = ncx2.logsf(t[None, :], d, nc[:, None])                 # (n, G + 2): log P[D^2/s2 >= t]
            logsf[:, 0] = 0.0
            logsf[:, -1] = -np.inf
            sf = np.exp(logsf)
            mass = sf[:, :-1] - sf[:, 1:]                                  # P[in bucket l]
            total = logsf.sum(0)                                            # sum_j log S_j(t)
            with np.errstate(invalid="ignore"):
                others_next = np.exp(total[None, 1:] - logsf[:, 1:])        # prod_{j != i} S_j(t_{l+1})
                others_here = np.exp(total[None, :-1] - logsf[:, :-1])      # prod_{j != i} S_j(t_l)
            others_next = np.nan_to_num(others_next, nan=0.0)
            others_here = np.nan_to_num(others_here, nan=1.0)
            low_i = (mass * others_next).sum(1)
            high_i = np.minimum((mass * others_here).sum(1), 1.0)
            p1_low = low_i[ty].sum()
            p1_high = min(high_i[ty].sum(), 1.0 - low_i[~ty].sum())
            lows.append(max(p1_low, 0.0))
            highs.append(min(max(p1_high, p1_low), 1.0))
        return torch.tensor(lows), torch.tensor(highs)

    def certify(self, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, *,
                progress: Progress = None) -> RobustnessCertificate:
        low, high = self.probabilities(train_x, train_y, x)
        return _certificate(low, high, self.sigma, 0.0, 0)


__all__ = ["RABEnsemble", "RABNearestNeighbor"]
