"""Model architectures.  All take [0,1] images, normalize inside, and expose ``features``/``head``
(see ``models.base``).  ``build(arch, **kwargs)`` rebuilds any of them from a JSON sidecar."""
from __future__ import annotations

from .base import ImageClassifier, Normalize
from .cnn import BadNetsCNN, DigitsCNN, GTSRBCNN
from .handwired import HandWiredBackdoor
from .mlp import MLP
from .resnet import PreActResNet18

ARCHITECTURES: dict[str, type[ImageClassifier]] = {
    "badnets-cnn": BadNetsCNN,
    "digits-cnn": DigitsCNN,
    "gtsrb-cnn": GTSRBCNN,
    "preact-resnet18": PreActResNet18,
    "mlp": MLP,
}

DEFAULT_ARCH = {"digits": "digits-cnn", "mnist": "badnets-cnn", "cifar10": "badnets-cnn",
                "gtsrb": "gtsrb-cnn"}


def build(arch: str, **kwargs) -> ImageClassifier:
    """Instantiate architecture ``arch`` (a key of ``ARCHITECTURES``) with ``kwargs``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"model arch must be one of {sorted(ARCHITECTURES)}; got {arch!r}.")
    return ARCHITECTURES[arch](**kwargs)


__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "build", "ImageClassifier", "Normalize", "BadNetsCNN",
           "DigitsCNN", "GTSRBCNN", "HandWiredBackdoor", "MLP", "PreActResNet18"]
