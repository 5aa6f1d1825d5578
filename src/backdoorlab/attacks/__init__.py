"""Attacks registry: kebab-case name -> class (DESIGN section 4)."""
from .badnets import BadNets
from .blend import AdditiveTrigger, Blend, WarpTrigger
from .poison_frogs import PoisonFrogs
from .trojannn import TrojanNN

ATTACKS: dict[str, type] = {"badnets": BadNets}
ATTACKS["blend"] = Blend
ATTACKS["poison-frogs"] = PoisonFrogs
ATTACKS["trojannn"] = TrojanNN

__all__ = ["ATTACKS", "BadNets"]
__all__ += ["Blend", "AdditiveTrigger", "WarpTrigger", "PoisonFrogs", "TrojanNN"]
