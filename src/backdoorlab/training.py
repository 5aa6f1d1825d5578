"""One plain training function (DESIGN: no Trainer hierarchy).

``fit`` trains ``model`` in place on any dataset (materialized once as tensors, shuffled with the
given generator), with SGD (momentum, weight decay) or Adam, and reports throughput.  On CPU it is
deterministic for a given generator and thread count.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ._torch import device_of
from ._validation import one_of, positive
from .data import as_tensors


@dataclass(frozen=True)
class TrainLog:
    epochs: int
    steps: int
    seconds: float
    images_per_second: float
    final_loss: float

    def to_json(self) -> dict:
        return {"epochs": self.epochs, "steps": self.steps, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 1), "final_loss": self.final_loss}


def init_weights(model: torch.nn.Module, generator: torch.Generator | None = None) -> torch.nn.Module:
    """Re-initialise every conv / linear layer from ``generator`` (PyTorch's default scheme),
    so that model creation is reproducible without touching the global RNG."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                torch.nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model


def fit(model: torch.nn.Module, dataset, *, epochs: int = 10, batch_size: int = 128, lr: float = 0.01,
        optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
        lr_schedule: str = "cosine", generator: torch.Generator | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        progress: Callable[[int, int], None] | None = None) -> TrainLog:
    """Train ``model`` in place for ``epochs`` epochs; return a ``TrainLog``.

    ``lr_schedule``: ``"cosine"`` (per step, to 0) or ``"constant"``.  ``progress(step, total)``
    is called after each step.  The device follows the model's parameters."""
    positive("fit", "epochs", epochs, integer=True)
    positive("fit", "batch_size", batch_size, integer=True)
    positive("fit", "lr", lr)
    one_of("fit", "optimizer", optimizer, {"sgd", "adam"})
    one_of("fit", "lr_schedule", lr_schedule, {"cosine", "constant"})
    loss_fn = loss_fn or F.cross_entropy
    dev = device_of(model)
    x, y = as_tensors(dataset)
    x, y = x.to(dev), y.to(dev)
    n = len(y)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    t0 = time.perf_counter()
    step, loss_v = minibatch_loop(model, opt, n, lambda idx: loss_fn(model(x[idx]), y[idx]), epochs=epochs,
                                  batch_size=batch_size, cosine=lr_schedule == "cosine", generator=generator,
                                  progress=progress, device=dev)
    seconds = time.perf_counter() - t0
    return TrainLog(epochs, step, seconds, epochs * n / max(seconds, 1e-9), loss_v)


def minibatch_loop(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int,
                   loss_of_batch: Callable[[torch.Tensor], torch.Tensor], *, epochs: int, batch_size: int,
                   cosine: bool = True, generator: torch.Generator | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   device: torch.device | str | None = None) -> tuple[int, float]:
    """The training loop every trainer shares: ``epochs`` shuffled passes over ``range(n)`` in
    batches, one ``opt`` step on ``loss_of_batch(indices)`` each, per-step cosine (to 0) or constant
    learning rate, ``progress(step, total)`` after each step.  ``model`` is in train mode during the
    loop and left in eval mode; returns (steps, last loss)."""
    total = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + math.cos(math.pi * s / total))) if cosine else (lambda s: 1.0))
    model.train()
    step, last = 0, torch.zeros(())
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        if device is not None:
            perm = perm.to(device)
        for i in range(0, n, batch_size):
            loss = loss_of_batch(perm[i:i + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            last = loss.detach()
            if progress is not None:
                progress(step, total)
    model.eval()
    return step, float(last)
