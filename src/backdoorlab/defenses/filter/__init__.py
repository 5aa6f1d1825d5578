"""Inference-time input filters (``InputFilter``), the generic ``Guard``, and purifiers."""
from .guard import WITHHELD, Guard

FILTERS: dict[str, type] = {}
PURIFIERS: dict[str, type] = {}

__all__ = ["FILTERS", "PURIFIERS", "Guard", "WITHHELD"]
