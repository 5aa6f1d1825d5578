"""Attacks registry: kebab-case name -> class (DESIGN section 4)."""
from .badnets import BadNets

ATTACKS: dict[str, type] = {"badnets": BadNets}

__all__ = ["ATTACKS", "BadNets"]
