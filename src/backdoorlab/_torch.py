"""Small torch helpers: device of a model, batched prediction, model copies that are safe."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch


def device_of(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched; returned on ``x``'s device."""
    dev = device_of(model)
    with eval_mode(model):
        out = [model(x[i:i + batch_size].to(dev)).to(x.device) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return predict_logits(model, x, batch_size).argmax(1)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode and restore its previous per-module modes afterwards."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in zip(model.modules(), modes):
            m.training = t


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Disable parameter gradients (e.g. while optimising a trigger) and restore them afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def clone_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy that shares nothing with ``model`` (never mutate the caller's model)."""
    return copy.deepcopy(model)


def generator_seed(generator: torch.Generator | None) -> int:
    """Draw a seed from ``generator`` (or 0) to derive other generators reproducibly."""
    if generator is None:
        return 0
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def new_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g
