"""Certified defenses: each certifier returns a typed certificate defined in its own module."""
CERTIFIERS: dict[str, type] = {}

__all__ = ["CERTIFIERS"]

# issue 8: verifying backdoor-freeness (Pham & Sun, CAV 2022), problems 1 and 2
from .freeness import FreenessVerifier  # noqa: E402
from .statistical import StatisticalVerifier  # noqa: E402

CERTIFIERS["freeness"] = FreenessVerifier
CERTIFIERS["freeness-statistical"] = StatisticalVerifier
