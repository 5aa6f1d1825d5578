"""Retraining / fine-tuning on clean data (seed 000, "Retraining"; Liu, Xie, Srivastava, "Neural
Trojans", ICCD 2017).

Threat model: the defender received a possibly backdoored model and holds a small clean labelled
set drawn from the training distribution; nothing about the trigger or the target is known.

Idea: catastrophic forgetting.  Fine-tuning the model on new clean data may overwrite what it
learnt from the poison, because the clean data never exercises the trigger.

    (1)  min_θ  (1/n) Σ_i L_CE(f_θ(x_i), y_i)      over the defender's clean set {(x_i, y_i)}

Exercise 2 of seed 000 asks why the result is what it is: the clean set never contains the
trigger, so the gradient of (1) barely touches the weights that implement the trigger -> target
shortcut; with a small learning rate and few epochs retraining keeps the backdoor (ASR stays
high), and only aggressive retraining (large learning rate, many epochs) erodes it, at the price of
clean accuracy.  Fine-Pruning, NAD and I-BAU are ways to make forgetting targeted.

Deviations: none beyond the optimiser (SGD + momentum, cosine schedule, weight decay, the same
``training.fit`` used everywhere in backdoorlab).

This module also holds the small helpers the other mitigators of issue 4 share (clean-set checks,
progress phases, a fresh trainable copy of the model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..._torch import clone_model
from ..._validation import check_images, check_labels, one_of, positive
from ...data import as_tensors
from ...roles import Mitigator, Progress
from ...training import fit
from ...types import Repaired


def clean_tensors(owner: str, model: torch.nn.Module, clean) -> tuple[torch.Tensor, torch.Tensor]:
    """The defender's clean set as checked ``(x, y)`` tensors."""
    if clean is None:
        raise ValueError(f"{owner}.repair needs a clean labelled set; got None.")
    x, y = as_tensors(clean)
    check_images(x, f"{owner} clean images")
    y = check_labels(y, len(x), getattr(model, "num_classes", None), f"{owner} clean labels")
    if len(x) == 0:
        raise ValueError(f"{owner}.repair needs at least one clean sample; got 0.")
    return x, y


def trainable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` with every parameter trainable (the input is never touched)."""
    new = clone_model(model)
    for p in new.parameters():
        p.requires_grad_(True)
    return new


def phase(progress: Progress, offset: int, total: int) -> Callable[[int, int], None] | None:
    """A progress callback for one phase (steps ``offset+1 .. offset+n``) of a ``total``-step job."""
    if progress is None:
        return None
    return lambda done, _n: progress(offset + done, total)


def steps(n: int, batch_size: int, epochs: int) -> int:
    return epochs * (-(-n // batch_size))


@dataclass(frozen=True, kw_only=True)
class FineTune(Mitigator):
    """Retraining on the defender's clean set (equation 1).

    epochs:       passes over the clean set.
    lr:           initial learning rate (cosine schedule to 0).
    batch_size:   mini-batch size.
    optimizer:    "sgd" (momentum 0.9) or "adam".
    weight_decay: L2 penalty of the optimiser.
    """

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        name = type(self).__name__
        positive(name, "epochs", self.epochs, integer=True)
        positive(name, "lr", self.lr)
        positive(name, "batch_size", self.batch_size, integer=True)
        one_of(name, "optimizer", self.optimizer, {"sgd", "adam"})
        positive(name, "weight_decay", self.weight_decay, allow_zero=True)

    def repair(self, model: torch.nn.Module, clean, *, generator: torch.Generator | None = None,
               progress: Progress = None) -> Repaired:
        x, y = clean_tensors(type(self).__name__, model, clean)
        new = trainable_copy(model)
        log = fit(new, (x, y), epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                  optimizer=self.optimizer, weight_decay=self.weight_decay, generator=generator,
                  progress=progress)
        return Repaired(model=new.eval(), summary={"epochs": self.epochs, "steps": log.steps,
                                                   "final_loss": log.final_loss, "clean_samples": len(y)})
