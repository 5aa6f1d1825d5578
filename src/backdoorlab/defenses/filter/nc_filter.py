"""Neural Cleanse input filter (Wang et al., S&P 2019, section VI-A "Filter for detecting
adversarial inputs"; seed 001 "Mitigating Backdoors: Filter").

Threat model: at inference time the attacker stamps inputs with the trigger; the defender holds
the model, the trigger reversed by Neural Cleanse, and clean inputs to calibrate a threshold.

Method:
  1. stamp clean inputs with the reversed trigger (m, Δ) and rank the penultimate neurons by their
     mean activation gap  g_j = E[h_j(A(x, m, Δ))] - E[h_j(x)];
  2. keep the top 1% (``top_fraction``) of neurons, the ones the reversed trigger excites most;
  3. score(x) = mean activation of those neurons on x (higher = more suspicious);
  4. the threshold is calibrated on clean inputs at a chosen false-positive rate by ``Guard``.

Deviations:
  * When no reversed trigger is given, ``score`` runs Neural Cleanse on the clean pool itself
    (once per model and pool, cached) and uses the most anomalous label's trigger, or the
    smallest one when nothing is flagged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..._torch import device_of, eval_mode, new_generator
from ..._validation import check_images, in_range
from ...roles import InputFilter
from ...triggers import PatchTrigger
from ...types import Verdict
from ..detect.neural_cleanse import NeuralCleanse, reversed_trigger
from ._cache import ModelCache


@torch.no_grad()
def penultimate(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``model.features(x)`` (N, D) in eval mode, batched, on ``x``'s device."""
    if not callable(getattr(model, "features", None)):
        raise TypeError("Neural Cleanse's filter and pruning need a backdoorlab model with .features(x) "
                        f"(penultimate activations); got {type(model).__name__}.")
    dev = device_of(model)
    with eval_mode(model):
        out = [model.features(x[i:i + batch_size].to(dev)).to(x.device) for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def activation_gap(model: torch.nn.Module, clean: torch.Tensor, trigger: PatchTrigger) -> torch.Tensor:
    """g_j = mean activation of neuron j on stamped clean inputs minus on the same clean inputs."""
    return penultimate(model, trigger.apply(clean)).mean(0) - penultimate(model, clean).mean(0)


@dataclass(frozen=True, kw_only=True)
class NCFilter(InputFilter):
    """trigger: the reversed trigger (None: reverse-engineer it on the clean pool).
    top_fraction: fraction of penultimate neurons kept (the paper's top 1%).
    detector: the Neural Cleanse run used when ``trigger`` is None.  seed: its generator seed."""

    trigger: PatchTrigger | None = None
    top_fraction: float = 0.01
    detector: NeuralCleanse = field(default_factory=NeuralCleanse)
    seed: int = 0
    _cache: ModelCache = field(default_factory=ModelCache, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        in_range("NCFilter", "top_fraction", self.top_fraction, 0.0, 1.0, lo_open=True)
        if self.trigger is not None and not isinstance(self.trigger, PatchTrigger):
            raise TypeError(f"NCFilter.trigger must be a PatchTrigger; got {type(self.trigger).__name__}.")
        if not isinstance(self.detector, NeuralCleanse):
            raise TypeError(f"NCFilter.detector must be a NeuralCleanse; got {type(self.detector).__name__}.")

    @classmethod
    def from_verdict(cls, verdict: Verdict, **kwargs) -> "NCFilter":
        """The filter for the most anomalous (else smallest) trigger of a Neural Cleanse verdict."""
        ev = verdict.evidence
        label = verdict.suspects[0] if verdict.suspects else ev.smallest
        return cls(trigger=ev.trigger_for(label), **kwargs)

    def neurons(self, model: torch.nn.Module, clean_pool: torch.Tensor) -> torch.Tensor:
        """Indices of the top ``top_fraction`` penultimate neurons by activation gap (steps 1-2)."""
        trig = self.trigger if self.trigger is not None else self._reversed(model, clean_pool)
        gap = activation_gap(model, clean_pool, trig)
        k = max(1, math.ceil(self.top_fraction * len(gap)))
        return gap.topk(k).indices

    def score(self, model: torch.nn.Module, x: torch.Tensor, clean_pool: torch.Tensor) -> torch.Tensor:
        check_images(x, "NCFilter.score x")
        check_images(clean_pool, "NCFilter.score clean_pool")
        top = self.neurons(model, clean_pool)
        return penultimate(model, x)[:, top.to(x.device)].mean(1)                       # step 3

    def _reversed(self, model: torch.nn.Module, clean_pool: torch.Tensor) -> PatchTrigger:
        # Cached per (model, pool) by identity (see ModelCache).
        return self._cache.get(model, clean_pool, lambda: reversed_trigger(
            self.detector, model, clean_pool, generator=new_generator(self.seed))["trigger"])
