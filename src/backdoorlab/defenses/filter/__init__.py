"""Inference-time input filters (``InputFilter``), the generic ``Guard``, and purifiers."""
from .guard import WITHHELD, Guard
from .anomaly import AnomalyFilter
from .autoencoder import AutoencoderPurifier
from .februus import Februus
from .strip import Strip
from .transforms import BitDepth, Flip, MedianSmooth, ShrinkPad
from .nc_filter import NCFilter

FILTERS: dict[str, type] = {}
PURIFIERS: dict[str, type] = {}
FILTERS["strip"] = Strip
FILTERS["anomaly"] = AnomalyFilter
PURIFIERS["flip"] = Flip
PURIFIERS["shrink-pad"] = ShrinkPad
PURIFIERS["bit-depth"] = BitDepth
PURIFIERS["median"] = MedianSmooth
PURIFIERS["autoencoder"] = AutoencoderPurifier
PURIFIERS["februus"] = Februus
FILTERS["nc-filter"] = NCFilter

__all__ = ["FILTERS", "PURIFIERS", "Guard", "WITHHELD"]
