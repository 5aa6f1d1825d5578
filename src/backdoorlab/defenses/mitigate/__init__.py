"""Model repair (``Mitigator``): returns a new model."""
from .fine_pruning import FinePruning
from .finetune import FineTune
from .i_bau import IBAU
from .nad import NAD
from .nc_prune import NCPrune
from .nc_unlearn import NCUnlearn

MITIGATORS: dict[str, type] = {}
MITIGATORS["finetune"] = FineTune
MITIGATORS["fine-pruning"] = FinePruning
MITIGATORS["nad"] = NAD
MITIGATORS["i-bau"] = IBAU
MITIGATORS["nc-unlearn"] = NCUnlearn
MITIGATORS["nc-prune"] = NCPrune

__all__ = ["MITIGATORS"]
