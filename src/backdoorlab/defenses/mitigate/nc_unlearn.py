"""Neural Cleanse patching by unlearning (Wang et al., S&P 2019, section VI-C; seed 001
"Mitigating Backdoors: Patching DNN via Unlearning", seed 000 "neural unlearning").

Threat model: the defender holds a trojaned model and a small clean set (the paper: 10% of the
training data) and wants a model that ignores the trigger.

Method:
  1. reverse-engineer the trigger with Neural Cleanse (or take the one given);
  2. stamp a random 20% (``stamp_fraction``) of the clean set with the reversed trigger,
     keeping their TRUE labels;
  3. fine-tune the model on that set for 1 epoch, so it learns which weights to change.
  ``stamp_fraction=0`` is the paper's control "patching with clean images only"; passing the
  original trigger as ``trigger`` is its "patching with the original trigger" row.

Deviations:
  * The paper does not give the fine-tuning optimiser; we use SGD with momentum 0.9 and a constant
    learning rate (``lr``), the same ``training.fit`` every model in backdoorlab trains with.
  * A model that Neural Cleanse does not flag is returned unchanged (``repair_unflagged=False``),
    as BackdoorBench does; the summary still names the smallest reversed trigger.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._torch import clone_model
from ..._validation import in_range, one_of, positive
from ...data import as_tensors
from ...roles import Mitigator, Progress
from ...training import fit
from ...triggers import PatchTrigger
from ...types import Repaired
from ..detect.neural_cleanse import NeuralCleanse, reversed_trigger


@dataclass(frozen=True, kw_only=True)
class NCUnlearn(Mitigator):
    """stamp_fraction: share of the clean set stamped with the reversed trigger (paper 20%).
    epochs / lr / batch_size / optimizer: the fine-tuning (paper: 1 epoch).
    trigger / target: use this trigger instead of reversing one (e.g. the original trigger).
    repair_unflagged: fine-tune even when Neural Cleanse does not flag the model.
    detector: the Neural Cleanse run that reverses the trigger."""

    stamp_fraction: float = 0.2
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 32
    optimizer: str = "sgd"
    repair_unflagged: bool = False
    trigger: PatchTrigger | None = None
    target: int | None = None
    detector: NeuralCleanse = field(default_factory=NeuralCleanse)

    def __post_init__(self) -> None:
        in_range("NCUnlearn", "stamp_fraction", self.stamp_fraction, 0.0, 1.0)
        positive("NCUnlearn", "epochs", self.epochs, integer=True)
        positive("NCUnlearn", "lr", self.lr)
        positive("NCUnlearn", "batch_size", self.batch_size, integer=True)
        one_of("NCUnlearn", "optimizer", self.optimizer, {"sgd", "adam"})
        if self.trigger is not None and not isinstance(self.trigger, PatchTrigger):
            raise TypeError(f"NCUnlearn.trigger must be a PatchTrigger; got {type(self.trigger).__name__}.")
        if not isinstance(self.detector, NeuralCleanse):
            raise TypeError(f"NCUnlearn.detector must be a NeuralCleanse; got {type(self.detector).__name__}.")

    def repair(self, model: torch.nn.Module, clean, *, generator: torch.Generator | None = None,
               progress: Progress = None) -> Repaired:
        x, y = as_tensors(clean)
        new = clone_model(model)
        if self.stamp_fraction > 0 or self.trigger is not None:
            rev = reversed_trigger(self.detector, model, (x, y), trigger=self.trigger, target=self.target,
                                   generator=generator, progress=progress)                     # step 1
        else:
            rev = {"trigger": None, "target": None, "flagged": True, "l1_norm": None, "anomaly_index": None}
        summary = {k: v for k, v in rev.items() if k != "verdict" and v is not None}
        if not rev["flagged"] and not self.repair_unflagged:
            return Repaired(model=new.eval(), summary={**summary, "repaired": False, "stamped": 0})
        n = round(self.stamp_fraction * len(y)) if rev["trigger"] is not None else 0
        chosen = torch.randperm(len(y), generator=generator)[:n]                              # step 2
        xs = x.clone()
        if n:
            xs[chosen] = rev["trigger"].apply(x[chosen])                                       # true labels kept
        log = fit(new, (xs, y), epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,       # step 3
                  optimizer=self.optimizer, lr_schedule="constant", generator=generator)
        return Repaired(model=new.eval(), summary={**summary, "repaired": True, "stamped": n,
                                                   "fine_tune_steps": log.steps})
