"""Model repair (``Mitigator``): returns a new model."""
from .nc_prune import NCPrune
from .nc_unlearn import NCUnlearn

MITIGATORS: dict[str, type] = {}
MITIGATORS["nc-unlearn"] = NCUnlearn
MITIGATORS["nc-prune"] = NCPrune

__all__ = ["MITIGATORS"]
