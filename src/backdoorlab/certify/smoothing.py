"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019), read as a backdoor certificate (seed 000).

Threat model: an attacker who may add any perturbation delta with ||delta||_2 < R to a test input
(a trigger is one such perturbation); the base model f itself may be backdoored.

    (1) g(x) = argmax_c P[f(x + eps) = c],  eps ~ N(0, sigma^2 I)        (the smoothed classifier)
    (2) if p_A_lower >= 1/2 then g(x + delta) = c_A for every ||delta||_2 < R,
        R = sigma * Phi^-1(p_A_lower)                                      (Theorem 1, p_B <= 1 - p_A)
    CERTIFY(f, sigma, x, n0, n, alpha): c_A = top class of n0 noisy draws; n_A = votes for c_A in n
        fresh draws; p_A_lower = one-sided (1 - alpha) Clopper-Pearson bound; abstain if < 1/2.
    PREDICT(f, sigma, x, n, alpha): top two counts n_A, n_B; abstain unless the two-sided binomial
        test of n_A vs n_A + n_B at p = 1/2 has p-value <= alpha.

Backdoor reading: g is certified at x against every trigger whose L2 change ||t(x) - x||_2 < R.
This is weak for full-intensity patches: a white 3x3 patch on a black MNIST corner moves the
image by exactly 3 in L2 (5 for 5x5), while smoothing radii at sigma <= 0.5 stay below ~2.

Training with a Gaussian noise layer (the seed's "noise layer"): ``train_with_noise``.

Deviations: counts are taken with ``torch.bincount`` for many inputs at once (the reference loops
in Python); the guarantee is per input with probability 1 - alpha over the sampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._torch import device_of, eval_mode
from .._validation import check_images, in_range, positive
from ..roles import Certifier, Progress
from ..triggers import Trigger

ABSTAIN = -1


@dataclass(frozen=True)
class RobustnessCertificate:
    """Per input: ``prediction`` (class, or -1 = abstain), certified L2 ``radius`` (0 when abstaining),
    ``p_lower`` (the Clopper-Pearson lower bound on p_A); each holds with probability 1 - ``alpha``."""

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    sigma: float
    alpha: float
    n: int

    def certified_accuracy(self, y: torch.Tensor, radius: float) -> float:
        """Fraction of inputs predicted correctly with certified radius > ``radius`` (>= 0 at 0)."""
        ok = (self.prediction == y.to(self.prediction.device)) & (self.prediction != ABSTAIN)
        ok = ok & ((self.radius > radius) if radius > 0 else torch.ones_like(ok))
        return float(ok.float().mean())

    def certified_against(self, norms: torch.Tensor) -> torch.Tensor:
        """Mask: g provably ignores a perturbation of L2 norm ``norms[i]`` at input i."""
        return (self.prediction != ABSTAIN) & (self.radius > norms.to(self.radius))

    def to_json(self) -> dict:
        return {"sigma": self.sigma, "alpha": self.alpha, "n": self.n,
                "prediction": self.prediction.tolist(), "radius": [round(float(r), 5) for r in self.radius],
                "abstained": int((self.prediction == ABSTAIN).sum())}


@dataclass(frozen=True, kw_only=True)
class RandomizedSmoothing(Certifier):
    """Cohen et al.'s PREDICT / CERTIFY.  sigma = noise level; n0 = selection draws; n = estimation
    draws; alpha = failure probability per input; batch_size = noisy images per forward pass."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    batch_size: int = 1000

    def __post_init__(self) -> None:
        positive("RandomizedSmoothing", "sigma", self.sigma)
        positive("RandomizedSmoothing", "n0", self.n0, integer=True)
        positive("RandomizedSmoothing", "n", self.n, integer=True)
        in_range("RandomizedSmoothing", "alpha", self.alpha, 0, 1, lo_open=True, hi_open=True)
        positive("RandomizedSmoothing", "batch_size", self.batch_size, integer=True)

    # ---- the two algorithms of the paper ----------------------------------------------------------
    def certify(self, model: nn.Module, x: torch.Tensor, *, generator: torch.Generator | None = None,
                progress: Progress = None) -> RobustnessCertificate:
        from scipy.stats import beta, norm

        check_images(x, "RandomizedSmoothing.certify x")
        total = 2 * len(x)
        selection = _counts(model, x, self.sigma, self.n0, self.batch_size, generator,
                            progress and (lambda d, _t: progress(d, total)))
        c_a = selection.argmax(1)
        estimation = _counts(model, x, self.sigma, self.n, self.batch_size, generator,
                             progress and (lambda d, _t: progress(len(x) + d, total)))
        n_a = estimation.gather(1, c_a[:, None]).squeeze(1).double().numpy()
        # one-sided lower Clopper-Pearson bound: Beta^-1(alpha; n_A, n - n_A + 1)  (0 when n_A = 0)
        p_low = torch.from_numpy(beta.ppf(self.alpha, n_a, self.n - n_a + 1)).nan_to_num(0.0)
        certified = p_low > 0.5
        radius = torch.where(certified, self.sigma * torch.from_numpy(norm.ppf(p_low.clamp(max=1 - 1e-16).numpy())),
                             torch.zeros_like(p_low))
        pred = torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN))
        return RobustnessCertificate(pred, radius.float(), p_low.float(), self.sigma, self.alpha, self.n)

    def predict(self, model: nn.Module, x: torch.Tensor, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """PREDICT: class per input, or -1 when the binomial test cannot separate the top two."""
        from scipy.stats import binomtest

        check_images(x, "RandomizedSmoothing.predict x")
        counts = _counts(model, x, self.sigma, self.n, self.batch_size, generator, None)
        top2 = counts.topk(2, dim=1)
        out = top2.indices[:, 0].clone()
        for i, (na, nb) in enumerate(top2.values.tolist()):
            if binomtest(int(na), int(na + nb), 0.5).pvalue > self.alpha:
                out[i] = ABSTAIN
        return out


@torch.no_grad()
def _counts(model: nn.Module, x: torch.Tensor, sigma: float, num: int, batch_size: int,
            generator: torch.Generator | None, progress: Progress) -> torch.Tensor:
    """(N, K) votes of f over ``num`` Gaussian draws per input; many inputs share one forward pass."""
    dev = device_of(model)
    per = max(1, batch_size // num) if num < batch_size else 1   # inputs per forward pass
    reps = min(num, batch_size)                                # draws per input per forward pass
    counts = None
    with eval_mode(model):
        for i in range(0, len(x), per):
            xb = x[i:i + per].to(dev)
            c = None
            left = num
            while left > 0:
                r = min(reps, left)
                noise = torch.randn((len(xb), r, *x.shape[1:]), generator=generator).to(dev) * sigma
                logits = model((xb[:, None] + noise).flatten(0, 1))
                k = logits.shape[1]
                pred = logits.argmax(1).view(len(xb), r)
                add = torch.zeros(len(xb), k, dtype=torch.long, device=dev).scatter_add_(
                    1, pred, torch.ones_like(pred))
                c = add if c is None else c + add
                left -= r
            if counts is None:
                counts = torch.zeros(len(x), c.shape[1], dtype=torch.long)
            counts[i:i + len(xb)] = c.cpu()
            if progress is not None:
                progress(i + len(xb), len(x))
    return counts if counts is not None else torch.zeros(0, 1, dtype=torch.long)


# ---- training with a Gaussian noise layer ---------------------------------------------------------
class GaussianNoise(nn.Module):
    """Adds N(0, sigma^2) to its input in training mode (identity in eval mode)."""

    def __init__(self, sigma: float, generator: torch.Generator | None = None):
        super().__init__()
        self.sigma, self.generator = float(sigma), generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x + torch.randn(x.shape, generator=self.generator).to(x) * self.sigma


def train_with_noise(model: nn.Module, dataset, *, sigma: float, generator: torch.Generator | None = None,
                     **fit_kwargs):
    """Train ``model`` in place with Gaussian noise augmentation at level ``sigma`` (returns the TrainLog);
    the base classifier must see the noise it is smoothed with, or g collapses."""
    from ..training import fit

    positive("train_with_noise", "sigma", sigma)
    wrapped = nn.Sequential(GaussianNoise(sigma, generator), model)
    log = fit(wrapped, dataset, generator=generator, **fit_kwargs)
    model.eval()
    return log


# ---- the backdoor reading -------------------------------------------------------------------------
def trigger_norms(x: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """||t(x) - x||_2 per input: the perturbation a concrete trigger makes."""
    return (trigger.apply(x) - x).flatten(1).norm(dim=1)


def worst_patch_norms(x: torch.Tensor, size: int) -> torch.Tensor:
    """Largest L2 change any ``size`` x ``size`` patch (any position, any pixel values in [0, 1],
    all channels) can make to each input: max over positions of ||max(x, 1 - x)||_2 on the patch."""
    gap2 = torch.maximum(x, 1 - x).pow(2).sum(1, keepdim=True)       # (N, 1, H, W)
    window = torch.nn.functional.avg_pool2d(gap2, size, stride=1) * size * size
    return window.flatten(1).amax(1).sqrt()


def patch_certified_fraction(cert: RobustnessCertificate, x: torch.Tensor, size: int,
                             trigger: Trigger | None = None) -> dict:
    """Fraction of inputs certified against (a) the given concrete ``trigger`` and (b) every
    ``size`` x ``size`` patch; also the bound sqrt(C) * size that a full-intensity patch reaches."""
    out = {"size": size, "max_patch_norm": math.sqrt(x.shape[1]) * size,
           "certified_any_patch": float(cert.certified_against(worst_patch_norms(x, size)).float().mean()),
           "median_radius": float(cert.radius.median())}
    if trigger is not None:
        norms = trigger_norms(x, trigger)
        out["trigger_norm_median"] = float(norms.median())
        out["certified_trigger"] = float(cert.certified_against(norms).float().mean())
    return out


__all__ = ["RandomizedSmoothing", "RobustnessCertificate", "GaussianNoise", "train_with_noise",
           "trigger_norms", "worst_patch_norms", "patch_certified_fraction", "ABSTAIN"]
