"""backdoorlab: attack, audit, repair and certify neural networks against backdoors.

Re-exports the role bases, result types and triggers; everything else lives in its subpackage
(``backdoorlab.attacks``, ``.defenses``, ``.certify``, ``.data``, ``.models``, ``.metrics``).
"""
from .roles import (Attack, Certifier, Detector, InputFilter, Mitigator, ModelAttack, Purifier,
                    Sanitizer)
from .triggers import BlendTrigger, PatchTrigger, Trigger
from .types import (Implanted, InstanceGoal, Poisoned, Repaired, SampleScores, Screened,
                    TriggerGoal, Verdict)

__version__ = "0.1.0"

__all__ = ["Attack", "Certifier", "Detector", "InputFilter", "Mitigator", "ModelAttack", "Purifier",
           "Sanitizer", "BlendTrigger", "PatchTrigger", "Trigger", "Implanted", "InstanceGoal",
           "Poisoned", "Repaired", "SampleScores", "Screened", "TriggerGoal", "Verdict", "__version__"]
