"""BadNets (Gu, Dolan-Gavitt, Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning
Model Supply Chain", 2017/2019; seed 001, "BadNets: MNIST case study").

Threat model: the attacker controls (part of) the training set and adds stamped, relabelled
copies; the victim trains normally.

Algorithm (seed 001):
  1. pick a fraction ``rate`` of the training samples (for all-to-one, only samples whose label
     differs from the target);
  2. stamp each with the trigger x' = (1 - m) x + m Δ (single bright pixel or pattern,
     bottom-right);
  3. relabel: all-to-one y' = t; all-to-all y' = (y + 1) mod K; or any label mapping;
  4. the victim trains on the poisoned set.

Deviations:
  * The paper *adds* poisoned copies to the clean set; we replace the chosen samples in place (the
    common convention of BackdoorBench and peers), so the set size is unchanged and ``rate`` is the
    poisoned fraction.  With 10% poison this changes nothing measurable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import in_range
from ..data import PoisonedDataset, as_tensors
from ..roles import Attack
from ..triggers import Trigger
from ..types import Poisoned, TriggerGoal


@dataclass(frozen=True, kw_only=True)
class BadNets(Attack):
    """BadNets data poisoning.

    trigger: the stamp (e.g. ``PatchTrigger.badnets_pattern(shape)``).
    target:  all-to-one target label t (ignored when ``all_to_all`` or ``mapping`` is given).
    all_to_all: relabel y -> (y + 1) mod K.
    mapping: any label mapping, ``mapping[y]`` = new label.
    rate:    fraction of the training set that is poisoned.
    """

    trigger: Trigger
    target: int = 0
    all_to_all: bool = False
    mapping: tuple[int, ...] | None = None
    rate: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.trigger, Trigger):
            raise TypeError(f"BadNets.trigger must be a Trigger; got {type(self.trigger).__name__}.")
        in_range("BadNets", "rate", self.rate, 0.0, 1.0, lo_open=True)
        if not isinstance(self.target, int) or self.target < 0:
            raise ValueError(f"BadNets.target must be a non-negative int; got {self.target!r}.")

    def goal(self, num_classes: int) -> TriggerGoal:
        if self.mapping is not None:
            if len(self.mapping) != num_classes:
                raise ValueError(f"BadNets.mapping must have one entry per class ({num_classes}); "
                                 f"got {len(self.mapping)}.")
            return TriggerGoal(trigger=self.trigger, mapping=self.mapping)
        if self.all_to_all:
            return TriggerGoal.all_to_all(self.trigger, num_classes)
        if self.target >= num_classes:
            raise ValueError(f"BadNets.target must be < the number of classes ({num_classes}); got {self.target}.")
        return TriggerGoal(trigger=self.trigger, target=self.target)

    def poison(self, dataset, *, model=None, generator: torch.Generator | None = None) -> Poisoned:
        _, y = as_tensors(dataset)
        K = getattr(getattr(dataset, "info", None), "num_classes", None) or int(y.max()) + 1
        goal = self.goal(K)
        candidates = torch.nonzero(goal.relevant(y)).flatten()          # step 1
        n = min(len(candidates), round(self.rate * len(y)))
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:n]].sort().values
        relabel = goal.target_for(torch.arange(K))                        # step 3
        view = PoisonedDataset(dataset, chosen, self.trigger, relabel)     # step 2 (lazy)
        return Poisoned(dataset=view, poison_indices=chosen, goal=goal)
