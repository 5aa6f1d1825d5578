"""Model inspection (``Detector``): is this model backdoored?"""
from .neural_cleanse import NeuralCleanse, NeuralCleanseEvidence

DETECTORS: dict[str, type] = {}
DETECTORS["neural-cleanse"] = NeuralCleanse
from .dl_tnd import DLTND, DLTNDEvidence  # noqa: E402
from .df_tnd import DFTND, DFTNDEvidence  # noqa: E402

DETECTORS["dl-tnd"] = DLTND
DETECTORS["df-tnd"] = DFTND
from .calibrate import Calibration, calibrate  # noqa: E402

__all__ = ["DETECTORS"]
