"""A backdoor set directly in the weights, for tests and teaching.

``HandWiredBackdoor(clean, trigger, target, strength)`` keeps the clean model's features and adds
one extra ReLU feature that fires only when the (binary) patch trigger is present:

    s(x) = ReLU( Σ_i m_i (2 Δ_i - 1) x_i  -  (Σ_i m_i Δ_i - 1/2) )

For a stamped input, Σ m (2Δ-1) Δ = Σ m Δ, so s = 1/2 exactly.  For an input whose trigger region is
not the pattern, the sum is at most Σ m Δ - (mismatch), so s = 0 once one pixel of the patch
differs from the pattern by more than 1/2.  The head adds ``2 * strength * s`` to the target logit,
so the backdoor's success on stamped inputs is 100% by construction, and a defense knows exactly
where the trigger is and which label it targets.  ``clean`` is the twin that has no backdoor.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..triggers import PatchTrigger
from .base import ImageClassifier


class _TriggerNeuron(nn.Module):
    def __init__(self, trigger: PatchTrigger):
        super().__init__()
        m = trigger.mask.expand_as(trigger.pattern)
        self.register_buffer("w", (m * (2 * trigger.pattern - 1)).flatten())
        self.bias = float((m * trigger.pattern).sum()) - 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.flatten(1) @ self.w - self.bias).unsqueeze(1)


class HandWiredBackdoor(ImageClassifier):
    """``clean`` + a trigger-detecting neuron wired into the ``target`` logit (see module doc)."""

    arch = "hand-wired"

    def __init__(self, clean: ImageClassifier, trigger: PatchTrigger, target: int, strength: float = 50.0):
        nn.Module.__init__(self)
        clean = copy.deepcopy(clean)
        self.input_shape, self.num_classes = clean.input_shape, clean.num_classes
        self.arch_kwargs = dict(clean.arch_kwargs)
        self.last_conv = f"clean_body.{clean.last_conv.split('.', 1)[1]}" if clean.last_conv else None
        self.normalize = nn.Identity()
        self.clean_normalize, self.clean_body = clean.normalize, clean.body
        self.trigger_neuron = _TriggerNeuron(trigger)
        D, K = clean.head.in_features, clean.num_classes
        self.head = nn.Linear(D + 1, K)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[:, :D] = clean.head.weight
            self.head.weight[target, D] = 2 * strength
            self.head.bias.copy_(clean.head.bias)
        self.target = int(target)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.clean_body(self.clean_normalize(x)), self.trigger_neuron(x)], dim=1)
