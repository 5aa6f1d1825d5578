"""DF-TND: the data-free TrojanNet detector (Wang, Zhang, Liu, Chen, Xiong, Wang, ECCV 2020,
"Practical detection of trojan neural networks: data-limited and data-free cases"; seed 003).

Threat model: the defender holds only the model's weights - no clean data at all - and asks
whether some label k is a Trojan target.  A TrojanNet has penultimate neurons that respond
unexpectedly strongly to the trigger, so maximising the neurons' response from random-noise
inputs recovers a trigger-like perturbation, and that perturbation raises the target's logit far
more than any other label's.

With x̂(m, δ) = (1 - m) * x + m * δ and r(x) in R^d the penultimate neurons (``model.features``):

    (6) maximize_{m, δ, w}  Σ_{i=1..d} w_i r_i(x̂(m, δ)) - λ ||m||_1
        subject to {δ, m} in C (0 <= m <= 1, 0 <= δ <= 1),  0 <= w <= 1,  1^T w = 1,
        averaged over N random-noise inputs x_1..x_N (each with its own (m_i, δ_i) at first);
    (7) L_k = (1/N) Σ_i [ f_k(x̂_i(p^(i))) - f_k(x_i) ]   for every label k (f = logits),

and label k is a Trojan target when L_k is an outlier above the other labels.

Solver (as the official code, ``robustness_lib/attacker.py``): projected sign-gradient ascent with
step ``step_size`` on δ, m and w; after each step m is soft-thresholded by step_size * λ and
clipped to [0, 1], δ clipped to [0, 1], and w projected onto the simplex.  After ``steps``
iterations the per-input (m_i, δ_i) are averaged and refined for ``refine_steps`` more.

Deviations:
- Outlier rule: the official notebook compares L_k with a preset absolute threshold (T = 100 for
  its CIFAR-10 ResNet-50), which depends on the logit scale of each architecture.  We flag label k
  when its MAD anomaly index over the L's exceeds ``threshold`` and L_k is above the median - the
  same scale-free statistic as Neural Cleanse (``_stats.anomaly_index``); the score is the largest
  such index.  An absolute floor ``min_increase`` (logits) guards against a flat L.
- The refinement optimises one shared (m, δ) for all inputs (a universal trigger, returned in the
  evidence); the official code starts each input from the average and refines them separately.
- Penultimate responses are ``model.features(x)`` (after their ReLU); the official code passes
  gradients through that ReLU (``fake_relu``).
- Noise inputs are uniform in [0, 1] drawn from the caller's generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..._stats import anomaly_index
from ..._torch import device_of, eval_mode, frozen, generator_seed, new_generator
from ..._validation import in_range, positive
from ...roles import Detector, Progress
from ...triggers import PatchTrigger
from ...types import Verdict


@dataclass(frozen=True, kw_only=True)
class DFTNDEvidence:
    """What DF-TND measured (index = label)."""

    logit_increase: torch.Tensor   # (K,) L_k of eq. 7
    anomaly_index: torch.Tensor    # (K,) MAD anomaly index of L_k
    trigger: PatchTrigger          # the refined universal (m, δ) of eq. 6
    neuron_weights: torch.Tensor   # (d,) w of eq. 6 (on the simplex)
    top_neurons: tuple[int, ...]   # neurons with the largest weights
    noise_inputs: int              # N

    @property
    def labels(self) -> tuple[int, ...]:
        return tuple(range(len(self.logit_increase)))

    @property
    def anomaly_indices(self) -> tuple[float, ...]:
        return tuple(float(a) for a in self.anomaly_index)

    def table(self) -> tuple[list[str], list[list]]:
        rows = [[k, round(float(v), 3), round(float(a), 2)]
                for k, (v, a) in enumerate(zip(self.logit_increase, self.anomaly_index))]
        return ["label", "logit increase L_k", "anomaly index"], rows

    def to_json(self) -> dict:
        return {"labels": list(self.labels), "logit_increase": self.logit_increase.tolist(),
                "anomaly_index": self.anomaly_index.tolist(), "trigger_l1": self.trigger.l1(),
                "top_neurons": list(self.top_neurons), "noise_inputs": self.noise_inputs}


@dataclass(frozen=True, kw_only=True)
class DFTND(Detector):
    """Data-free TrojanNet detector (ECCV 2020, section 5).  ``clean`` is ignored (may be None)."""

    data_free: ClassVar[bool] = True  # needs no clean data (``Combined`` and ``scan --no-data``)

    noise_inputs: int = 10          # N random-noise inputs
    steps: int = 150                # sign-gradient iterations with per-input (m_i, δ_i)
    refine_steps: int = 150         # iterations on the averaged, shared (m, δ)
    step_size: float = 0.02         # sign-gradient step on δ, m, w
    lam: float = 0.01               # λ: weight of ||m||_1 (per-image mean)
    threshold: float = 3.0          # MAD anomaly index above which L_k is an outlier
    min_increase: float = 0.0       # L_k must also exceed this many logits
    mask_init: float = 0.1          # initial m (δ starts uniform random)

    def __post_init__(self) -> None:
        name = type(self).__name__
        positive(name, "noise_inputs", self.noise_inputs, integer=True)
        positive(name, "steps", self.steps, integer=True)
        positive(name, "refine_steps", self.refine_steps, integer=True, allow_zero=True)
        positive(name, "step_size", self.step_size)
        positive(name, "lam", self.lam, allow_zero=True)
        positive(name, "threshold", self.threshold)
        positive(name, "min_increase", self.min_increase, allow_zero=True)
        in_range(name, "mask_init", self.mask_init, 0.0, 1.0)

    def detect(self, model: torch.nn.Module, clean=None, *, generator: torch.Generator | None = None,
               progress: Progress = None) -> Verdict:
        shape = self._input_shape(model, clean)
        dev = device_of(model)
        g = new_generator(generator_seed(generator))
        x = torch.rand(self.noise_inputs, *shape, generator=g).to(dev)
        total = self.steps + self.refine_steps
        with eval_mode(model), frozen(model):
            m, d, w = self._maximize_responses(model, x, g, progress, total)
            with torch.no_grad():
                x_hat = (1 - m) * x + m * d
                increase = (model(x_hat) - model(x)).mean(0).cpu()       # eq. 7
        ai = anomaly_index(increase).float()
        upper = (increase > increase.median()) & (increase > self.min_increase)
        score = float((ai * upper).max())
        flagged = [int(k) for k in torch.argsort(increase, descending=True)
                   if upper[k] and ai[k] > self.threshold]
        w = w.cpu()
        evidence = DFTNDEvidence(
            logit_increase=increase, anomaly_index=ai,
            trigger=PatchTrigger(mask=m[0].cpu(), pattern=d[0].cpu()), neuron_weights=w,
            top_neurons=tuple(int(i) for i in torch.argsort(w, descending=True)[:5]),
            noise_inputs=self.noise_inputs)
        return Verdict(backdoored=bool(flagged), score=score, threshold=float(self.threshold),
                       suspects=tuple(flagged), evidence=evidence)

    # ---- steps ---------------------------------------------------------------------------------
    @staticmethod
    def _input_shape(model, clean) -> tuple[int, ...]:
        if clean is not None:
            from ...data import as_tensors
            return tuple(as_tensors(clean)[0].shape[1:])
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError("DFTND.detect needs the model's input shape: give a model with "
                             "`input_shape` (every backdoorlab model has one) or a few images.")
        return tuple(int(s) for s in shape)

    def _maximize_responses(self, model, x, g, progress, total):
        """Eq. 6 by projected sign-gradient ascent; per-input (m_i, δ_i), then averaged and refined."""
        N, C, H, W = x.shape
        m = torch.full((N, 1, H, W), self.mask_init, device=x.device)
        d = torch.rand(N, C, H, W, generator=g).to(x.device)
        w = None
        done = 0
        for phase, n_steps in ((0, self.steps), (1, self.refine_steps)):
            if phase == 1:
                m, d = m.mean(0, keepdim=True), d.mean(0, keepdim=True)
            for _ in range(n_steps):
                m.requires_grad_(True)
                d.requires_grad_(True)
                r = model.features((1 - m) * x + m * d)                     # (N, d)
                if w is None:
                    w = torch.full((r.shape[1],), 1.0 / r.shape[1], device=x.device)
                w.requires_grad_(True)
                objective = (r * w).sum(1).mean() - self.lam * m.flatten(1).sum(1).mean()
                gm, gd, gw = torch.autograd.grad(objective, [m, d, w])
                with torch.no_grad():
                    d = (d + self.step_size * gd.sign()).clamp(0, 1)
                    m = m + self.step_size * gm.sign()
                    m = (m.abs() - self.step_size * self.lam).clamp_min(0).mul(m.sign()).clamp(0, 1)
                    w = _project_simplex(w + self.step_size * gw / gw.abs().max().clamp_min(1e-12))
                done += 1
                if progress is not None:
                    progress(done, total)
        return m.detach(), d.detach(), w.detach()


def _project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto {w >= 0, 1^T w = 1} (sort-based, exact)."""
    u = v.sort(descending=True).values
    css = u.cumsum(0) - 1
    k = torch.arange(1, len(v) + 1, device=v.device, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / k > 0).max())
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp_min(0)
