"""Poison Frogs (Shafahi, Huang, Najibi, Suciu, Studer, Dumitras, Goldstein, "Poison Frogs! Targeted
Clean-Label Poisoning Attacks on Neural Networks", NeurIPS 2018; seed 001).

Threat model: the attacker knows the (pre-trained) feature extractor f but not the training set;
it adds a few correctly labelled images of the base class so that, after the victim (re)trains,
one chosen target instance t is classified as the base class ``target_label``.

Feature collision (seed 001):
    p = argmin_x ||f(x) - f(t)||² + β ||x - b||²                                        (1)
Algorithm 1 (forward-backward splitting), x_0 = b:
    forward step:   x̂_i = x_{i-1} - λ ∇_x L_p(x_{i-1}),   L_p(x) = ||f(x) - f(t)||²
    backward step:  x_i = (x̂_i + λ β b) / (1 + β λ)
β = β0 · D_f² / D_x² (the paper's β0 = 0.25 scaled by feature and input dimensions).
Watermarking (end-to-end attacks): the base becomes b ← (1 - γ) b + γ t, opacity γ (paper 30%),
and several poisons are made from different bases.

Deviations:
  * As the official code, λ is halved for a poison whenever its objective (1) increased, and
    pixels are kept in [0, 1].
  * ``base_selection="closest"`` picks the bases nearest to t in feature space (the paper picks
    the multi-poison bases at random or by feature distance depending on the experiment).
  * The poisons replace their base images in place (``PoisonedDataset(replace=)``): the training
    set keeps its size and every label stays correct.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._torch import device_of, eval_mode, frozen
from .._validation import check_images, in_range, one_of, positive
from ..data import PoisonedDataset, as_tensors
from ..roles import Attack
from ..types import InstanceGoal, Poisoned


@dataclass(frozen=True, kw_only=True)
class PoisonFrogs(Attack):
    """Clean-label feature-collision poisoning.

    target_x:     the target instance t, (C, H, W) or (1, C, H, W) in [0, 1].
    target_label: the base class: the label the attacker wants t to receive.
    num_poisons:  how many poisons (one per base instance).
    beta0:        β0 of the β scaling (paper 0.25).   lr: λ.   steps: maxIters.
    opacity:      watermark opacity γ in [0, 1).
    base_selection: ``"random"`` or ``"closest"`` (in feature space) base instances.
    """

    target_x: torch.Tensor
    target_label: int
    num_poisons: int = 1
    beta0: float = 0.25
    lr: float = 0.01
    steps: int = 1000
    opacity: float = 0.0
    base_selection: str = "closest"

    def __post_init__(self) -> None:
        t = self.target_x
        if isinstance(t, torch.Tensor) and t.dim() == 3:
            t = t.unsqueeze(0)
        check_images(t, "PoisonFrogs.target_x")
        if len(t) != 1:
            raise ValueError(f"PoisonFrogs.target_x must be one image; got {len(t)}.")
        object.__setattr__(self, "target_x", t.detach().float().cpu())
        if not isinstance(self.target_label, int) or isinstance(self.target_label, bool) or self.target_label < 0:
            raise ValueError(f"PoisonFrogs.target_label must be a non-negative int; got {self.target_label!r}.")
        positive("PoisonFrogs", "num_poisons", self.num_poisons, integer=True)
        positive("PoisonFrogs", "beta0", self.beta0)
        positive("PoisonFrogs", "lr", self.lr)
        positive("PoisonFrogs", "steps", self.steps, integer=True)
        in_range("PoisonFrogs", "opacity", self.opacity, 0.0, 1.0, hi_open=True)
        one_of("PoisonFrogs", "base_selection", self.base_selection, {"random", "closest"})

    def beta(self, model: torch.nn.Module, x: torch.Tensor) -> float:
        """β = β0 · D_f² / D_x²."""
        d_f = int(model.features(x[:1].to(device_of(model))).shape[1])
        return self.beta0 * d_f ** 2 / x[0].numel() ** 2

    def craft(self, model: torch.nn.Module, targets: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
        """Algorithm 1 for each pair (targets[i], bases[i]) at once; returns the poisons (N, C, H, W).

        ``targets`` may be one image for all bases.  Watermarking with ``opacity`` is applied here."""
        dev = device_of(model)
        bases = bases.to(dev)
        targets = targets.to(dev).expand_as(bases)
        b = (1 - self.opacity) * bases + self.opacity * targets              # watermark
        beta = self.beta(model, b)
        lam = torch.full((len(b), 1, 1, 1), float(self.lr), device=dev)
        with eval_mode(model), frozen(model):
            with torch.no_grad():
                ft = model.features(targets)
            x = b.clone()
            prev = torch.full((len(b),), float("inf"), device=dev)
            for _ in range(self.steps):
                x.requires_grad_(True)
                lp = ((model.features(x) - ft) ** 2).sum(1)
                (grad,) = torch.autograd.grad(lp.sum(), x)
                with torch.no_grad():
                    obj = lp + beta * ((x - b) ** 2).flatten(1).sum(1)
                    lam = torch.where((obj > prev).view(-1, 1, 1, 1), lam / 2, lam)   # official code's decay
                    prev = obj
                    xh = x - lam * grad                                               # forward step
                    x = ((xh + lam * beta * b) / (1 + beta * lam)).clamp(0, 1)         # backward step
        return x.detach()

    def choose_bases(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        cand = torch.nonzero(y == self.target_label).flatten()
        if len(cand) < self.num_poisons:
            raise ValueError(f"PoisonFrogs.num_poisons must be <= the {len(cand)} images of class "
                             f"{self.target_label} in the dataset; got {self.num_poisons}.")
        if self.base_selection == "random":
            return cand[torch.randperm(len(cand), generator=generator)[:self.num_poisons]]
        dev = device_of(model)
        with eval_mode(model), torch.no_grad():
            ft = model.features(self.target_x.to(dev))
            d = torch.cat([((model.features(x[cand[i:i + 512]].to(dev)) - ft) ** 2).sum(1)
                           for i in range(0, len(cand), 512)])
        return cand[d.argsort()[:self.num_poisons].cpu()]

    def poison(self, dataset, *, model: torch.nn.Module | None = None,
               generator: torch.Generator | None = None) -> Poisoned:
        if model is None:
            raise ValueError("PoisonFrogs.poison needs model= (the feature extractor f the victim starts from).")
        x, y = as_tensors(dataset)
        if x.shape[1:] != self.target_x.shape[1:]:
            raise ValueError(f"PoisonFrogs.target_x must have the dataset's image shape {tuple(x.shape[1:])}; "
                             f"got {tuple(self.target_x.shape[1:])}.")
        idx = self.choose_bases(model, x, y, generator)
        poisons = self.craft(model, self.target_x, x[idx]).cpu()
        view = PoisonedDataset(dataset, idx, replace=poisons)
        goal = InstanceGoal(x=self.target_x, target=self.target_label)
        return Poisoned(dataset=view, poison_indices=idx.sort().values, goal=goal)
