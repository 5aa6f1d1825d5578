"""Inference-time input filters (``InputFilter``), the generic ``Guard``, and purifiers."""
from .guard import WITHHELD, Guard
from .nc_filter import NCFilter

FILTERS: dict[str, type] = {}
PURIFIERS: dict[str, type] = {}
FILTERS["nc-filter"] = NCFilter

__all__ = ["FILTERS", "PURIFIERS", "Guard", "WITHHELD"]
