"""A planted backdoor that gradient-based detectors can reach (shared by the DL-TND / DF-TND tests).

``HandWiredBackdoor`` with its trigger neuron replaced by a *linear* one, r(x) = gain * x_p for the
single pixel p (row 6, col 6 of the 8x8 digits, dark on clean digits): the target logit gains
2 * strength * gain * x_p, so setting p to 1 sends every input to the target (a one-pixel trigger,
mask L1 = 1), and r responds gain times more than a unit pixel - what DF-TND looks for.  The
hand-wired fixture's thresholded neuron has zero gradient until the whole patch is present,
which no gradient method can enter from clean or noise inputs.
"""
from __future__ import annotations

import torch
from torch import nn

from backdoorlab.models import HandWiredBackdoor
from backdoorlab.triggers import PatchTrigger

PIXEL = (6, 6)


class _LinearPixel(nn.Module):
    def __init__(self, index: int, gain: float):
        super().__init__()
        self.index, self.gain = index, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x.flatten(1)[:, self.index:self.index + 1]


def planted(clean_model, target: int = 3, gain: float = 1.0, strength: float = 50.0) -> HandWiredBackdoor:
    shape = clean_model.input_shape
    model = HandWiredBackdoor(clean_model, PatchTrigger.single_pixel(shape, "bottom-right"), target,
                              strength=strength / gain)
    model.trigger_neuron = _LinearPixel(PIXEL[0] * shape[2] + PIXEL[1], gain)
    return model.eval()
