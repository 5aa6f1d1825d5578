"""Anomaly-detection input filter of "Neural Trojans" (Liu, Xie, Srivastava, ICCD 2017; seed 000,
"Testing-time input filtering: anomaly detection").

Threat model: an inference-time filter in front of a possibly trojaned model; the defender holds
clean images but has never seen the trigger.

Algorithm (seed 000):
  1. craft abnormal samples from clean ones (the authors crafted them themselves);
  2. train a decision-tree classifier to tell crafted abnormal samples (label 1) from clean
     samples (label 0), on the input pixels or on the model's penultimate features;
  3. at inference, score an input by the tree's probability that it is abnormal and discard
     inputs above a threshold (set on clean inputs by ``Guard.calibrate``).

Crafting (step 1) uses generic corruptions that a defender can make without knowing any trigger:
a solid or random-noise square of random size (1 .. ``max_patch`` of the side) at a random
position, or a few isolated saturated pixels.  BadNets-like patches are one such anomaly;
"natural" or blended triggers are not, which is the limitation the seed's discussion asks about.

Deviations:
  * The paper's abnormal inputs were out-of-distribution images (before BadNets existed); we craft
    patch / pixel corruptions of the defender's clean images instead, the closest generic stand-in
    for a patch trigger.  Only the clean pool is used: no trojaned input is ever seen.
  * ``space="both"`` (pixels and penultimate features side by side) is our addition.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..._torch import device_of, eval_mode
from ..._validation import check_images, in_range, one_of, positive
from ...roles import InputFilter


@dataclass(frozen=True, kw_only=True)
class AnomalyFilter(InputFilter):
    """Decision tree trained on crafted abnormal vs clean samples.

    space:      what the tree sees: "input" pixels, penultimate "features", or "both".
    n_crafted:  crafted abnormal samples per clean pool image (the tree's class balance).
    max_patch:  largest crafted square side, as a fraction of the image side.
    max_depth:  depth limit of the tree (0 = grow until pure).
    min_leaf:   min_samples_leaf of the tree (smooths the abnormal probability).
    seed:       seed of the crafting and of the tree.
    """

    space: str = "input"
    n_crafted: int = 4
    max_patch: float = 0.25
    max_depth: int = 12
    min_leaf: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        one_of("AnomalyFilter", "space", self.space, {"input", "features", "both"})
        positive("AnomalyFilter", "n_crafted", self.n_crafted, integer=True)
        in_range("AnomalyFilter", "max_patch", self.max_patch, 0.0, 1.0, lo_open=True)
        positive("AnomalyFilter", "max_depth", self.max_depth, integer=True, allow_zero=True)
        positive("AnomalyFilter", "min_leaf", self.min_leaf, integer=True)
        if not isinstance(self.seed, int):
            raise ValueError(f"AnomalyFilter.seed must be an int; got {self.seed!r}.")

    def score(self, model: torch.nn.Module, x: torch.Tensor, clean_pool: torch.Tensor) -> torch.Tensor:
        """Probability that each input is abnormal, by a tree fitted on ``clean_pool`` (steps 1-3)."""
        check_images(x, "AnomalyFilter input")
        check_images(clean_pool, "AnomalyFilter clean_pool")
        if len(clean_pool) < 2 or clean_pool.shape[1:] != x.shape[1:]:
            raise ValueError(f"AnomalyFilter clean_pool must hold at least 2 images of shape "
                             f"{tuple(x.shape[1:])}; got {tuple(clean_pool.shape)!r}.")
        tree = self.fit_tree(model, clean_pool)
        proba = tree.predict_proba(self._describe(model, x))
        return torch.as_tensor(proba[:, 1], dtype=torch.float32, device=x.device)

    def fit_tree(self, model: torch.nn.Module, clean_pool: torch.Tensor):
        """Steps 1-2: craft abnormal samples and fit the decision tree (deterministic for ``seed``)."""
        from sklearn.tree import DecisionTreeClassifier

        g = torch.Generator().manual_seed(self.seed)
        clean = clean_pool.detach().cpu().float()
        abnormal = craft_abnormal(clean.repeat(self.n_crafted, 1, 1, 1), self.max_patch, g)
        feats = np.concatenate([self._describe(model, clean), self._describe(model, abnormal)])
        labels = np.concatenate([np.zeros(len(clean)), np.ones(len(abnormal))])
        tree = DecisionTreeClassifier(max_depth=self.max_depth or None, min_samples_leaf=self.min_leaf,
                                      random_state=self.seed)
        return tree.fit(feats, labels)

    @torch.no_grad()
    def _describe(self, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        parts = []
        if self.space in ("input", "both"):
            parts.append(x.detach().cpu().flatten(1).float())
        if self.space in ("features", "both"):
            dev = device_of(model)
            with eval_mode(model):
                f = [model.features(x[i:i + 1024].to(dev)).float().cpu() for i in range(0, len(x), 1024)]
            parts.append(torch.cat(f))
        return torch.cat(parts, 1).numpy()


def craft_abnormal(x: torch.Tensor, max_patch: float, generator: torch.Generator) -> torch.Tensor:
    """Corrupt each image of ``x`` (a copy) with one random anomaly: a solid square (kind 0), a
    random-noise square (kind 1), or 1-4 isolated saturated pixels (kind 2)."""
    N, C, H, W = x.shape
    out = x.clone()
    smax = max(1, round(max_patch * min(H, W)))
    kind = torch.randint(0, 3, (N,), generator=generator)
    size = torch.randint(1, smax + 1, (N,), generator=generator)
    for i in range(N):
        s = int(size[i])
        if int(kind[i]) < 2:
            r = int(torch.randint(0, H - s + 1, (1,), generator=generator))
            c = int(torch.randint(0, W - s + 1, (1,), generator=generator))
            if int(kind[i]) == 0:
                colour = torch.rand(C, 1, 1, generator=generator).round()  # black / white per channel
                out[i, :, r:r + s, c:c + s] = colour.expand(C, s, s)
            else:
                out[i, :, r:r + s, c:c + s] = torch.rand(C, s, s, generator=generator)
        else:
            k = int(torch.randint(1, 5, (1,), generator=generator))
            rr = torch.randint(0, H, (k,), generator=generator)
            cc = torch.randint(0, W, (k,), generator=generator)
            out[i, :, rr, cc] = torch.rand(C, 1, generator=generator).round().expand(C, k)
    return out
