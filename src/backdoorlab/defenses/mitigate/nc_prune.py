"""Neural Cleanse patching by neuron pruning (Wang et al., S&P 2019, section VI-B; seed 001
"Mitigating Backdoors: Patching DNN via Neuron Pruning").

Threat model: the defender holds a trojaned model and a small clean set, and may only switch
neurons off (no retraining).

Method:
  1. reverse-engineer the trigger with Neural Cleanse (or take the one given);
  2. rank the second-to-last layer's neurons by their activation gap between reversed-trigger
     inputs and clean inputs, g_j = E[h_j(A(x, m, Δ))] - E[h_j(x)], highest first;
  3. prune (set the neuron's output to 0 at inference) in that order, in steps of
     ``step_fraction`` of the layer, and stop as soon as the reversed trigger's success on the
     clean set falls to ``success_limit`` or below - or before the clean accuracy drops by more
     than ``max_accuracy_drop``.  The whole curve is reported.

Deviations:
  * A pruned neuron's output is removed by zeroing its column of the final linear layer
    (``model.head``), which is exactly "output 0" for the head and keeps the architecture, so the
    repaired model saves and loads like any other.
  * The penultimate features of the clean and stamped sets are computed once; every pruning
    level is then one masked matrix product (no forward pass per level).
  * A model that Neural Cleanse does not flag is returned unchanged (``repair_unflagged=False``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..._torch import clone_model
from ..._validation import in_range
from ...data import as_tensors
from ...roles import Mitigator, Progress
from ...triggers import PatchTrigger
from ...types import Repaired
from ..detect.neural_cleanse import NeuralCleanse, reversed_trigger
from ..filter.nc_filter import penultimate


@dataclass(frozen=True, kw_only=True)
class NCPrune(Mitigator):
    """success_limit: stop once the reversed trigger's success is at most this.
    max_accuracy_drop: clean-accuracy budget (fraction, on the clean set).
    step_fraction: share of the layer pruned per step.
    trigger / target: use this trigger instead of reversing one.
    repair_unflagged: prune even when Neural Cleanse does not flag the model.
    detector: the Neural Cleanse run that reverses the trigger."""

    success_limit: float = 0.05
    max_accuracy_drop: float = 0.05
    step_fraction: float = 0.01
    repair_unflagged: bool = False
    trigger: PatchTrigger | None = None
    target: int | None = None
    detector: NeuralCleanse = field(default_factory=NeuralCleanse)

    def __post_init__(self) -> None:
        in_range("NCPrune", "success_limit", self.success_limit, 0.0, 1.0)
        in_range("NCPrune", "max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0)
        in_range("NCPrune", "step_fraction", self.step_fraction, 0.0, 1.0, lo_open=True)
        if self.trigger is not None and not isinstance(self.trigger, PatchTrigger):
            raise TypeError(f"NCPrune.trigger must be a PatchTrigger; got {type(self.trigger).__name__}.")
        if not isinstance(self.detector, NeuralCleanse):
            raise TypeError(f"NCPrune.detector must be a NeuralCleanse; got {type(self.detector).__name__}.")

    def repair(self, model: torch.nn.Module, clean, *, generator: torch.Generator | None = None,
               progress: Progress = None) -> Repaired:
        x, y = as_tensors(clean)
        head = getattr(model, "head", None)
        if not isinstance(head, torch.nn.Linear):
            raise TypeError(f"NCPrune needs a backdoorlab model with a final Linear .head; got {type(model).__name__}.")
        new = clone_model(model).eval()
        rev = reversed_trigger(self.detector, model, (x, y), trigger=self.trigger, target=self.target,
                               generator=generator, progress=progress)                        # step 1
        summary = {k: v for k, v in rev.items() if k != "verdict" and v is not None}
        if not rev["flagged"] and not self.repair_unflagged:
            return Repaired(model=new, summary={**summary, "repaired": False, "pruned": 0})
        t, trig = rev["target"], rev["trigger"]
        other = y != t
        f_clean, f_stamp = penultimate(model, x), penultimate(model, trig.apply(x[other]))
        order = (f_stamp.mean(0) - f_clean[other].mean(0)).argsort(descending=True)          # step 2
        curve = self._curve(head, f_clean, y, f_stamp, t, order)
        n = self._stop(curve)                                                                # step 3
        with torch.no_grad():
            new.head.weight[:, order[:n].to(new.head.weight.device)] = 0
        return Repaired(model=new, summary={
            **summary, "repaired": True, "pruned": n, "pruned_fraction": n / len(order),
            "neurons": [int(j) for j in order[:n]],
            "curve": [{"pruned": k, "clean_accuracy": ca, "trigger_success": s} for k, ca, s in curve]})

    @torch.no_grad()
    def _curve(self, head, f_clean, y, f_stamp, target, order) -> list[tuple[int, float, float]]:
        """(neurons pruned, clean accuracy, reversed-trigger success) at every pruning level."""
        D = len(order)
        step = max(1, math.ceil(self.step_fraction * D))
        levels = list(range(0, D + 1, step))
        W, b = head.weight.detach().to(f_clean.device), head.bias
        b = torch.zeros(W.shape[0], device=f_clean.device) if b is None else b.detach().to(f_clean.device)
        keep = torch.ones(len(levels), D, device=f_clean.device)
        for i, n in enumerate(levels):
            keep[i, order[:n]] = 0
        out = []
        for i, n in enumerate(levels):  # (N, D) x (D, K) per level: no forward pass per level
            ca = float(((f_clean * keep[i]) @ W.T + b).argmax(1).eq(y.to(f_clean.device)).float().mean())
            asr = float(((f_stamp * keep[i]) @ W.T + b).argmax(1).eq(target).float().mean()) if len(f_stamp) else 0.0
            out.append((n, ca, asr))
        return out

    def _stop(self, curve: list[tuple[int, float, float]]) -> int:
        base = curve[0][1]
        chosen = 0
        for n, ca, asr in curve:
            if base - ca > self.max_accuracy_drop:
                break
            chosen = n
            if asr <= self.success_limit:
                break
        return chosen
