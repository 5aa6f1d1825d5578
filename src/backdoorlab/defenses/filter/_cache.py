"""A single-entry cache keyed on the identity of a model and of the inputs something was fitted on,
shared by the input filters that fit once per (model, clean pool) and reuse it on later ``score``
calls: ``NCFilter``'s reversed trigger and ``AnomalyFilter``'s trees (private; no I/O)."""
from __future__ import annotations

import weakref
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


class ModelCache:
    """Holds one value for one (model, inputs) pair, matched by identity (``is``), not by value.

    The model is held through a weak reference (the cache never keeps a model alive) and the inputs
    object itself, so a freed model or tensor whose id or address is reused can never hit it."""

    __slots__ = ("_entry",)

    def __init__(self) -> None:
        self._entry: tuple | None = None

    def get(self, model: torch.nn.Module, inputs: object, compute: Callable[[], T]) -> T:
        """The value cached for this very ``model`` and ``inputs``; else ``compute()``, which then
        replaces the entry."""
        hit = self._entry
        if hit is not None and hit[0]() is model and hit[1] is inputs:
            return hit[2]
        value = compute()
        self._entry = (weakref.ref(model), inputs, value)
        return value
