"""Certified defenses: each certifier returns a typed certificate defined in its own module."""
CERTIFIERS: dict[str, type] = {}

__all__ = ["CERTIFIERS"]

# issue 9: certified defenses against poisoning (smoothing, RAB, kNN/rNN, DPA, sphere/slab)
from .dpa import DeepPartitionAggregation  # noqa: E402
from .knn import CertifiedKNN, CertifiedRNN  # noqa: E402
from .rab import RABEnsemble, RABNearestNeighbor  # noqa: E402
from .smoothing import RandomizedSmoothing  # noqa: E402
from .sphere_slab import SphereSlabBound  # noqa: E402

CERTIFIERS["smoothing"] = RandomizedSmoothing
CERTIFIERS["rab"] = RABEnsemble
CERTIFIERS["rab-1nn"] = RABNearestNeighbor
CERTIFIERS["knn"] = CertifiedKNN
CERTIFIERS["rnn"] = CertifiedRNN
CERTIFIERS["dpa"] = DeepPartitionAggregation
CERTIFIERS["sphere-slab"] = SphereSlabBound

# issue 8: verifying backdoor-freeness (Pham & Sun, CAV 2022), problems 1 and 2
from .freeness import FreenessVerifier  # noqa: E402
from .statistical import StatisticalVerifier  # noqa: E402

CERTIFIERS["freeness"] = FreenessVerifier
CERTIFIERS["freeness-statistical"] = StatisticalVerifier
