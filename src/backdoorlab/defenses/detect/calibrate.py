"""Threshold calibration on known-clean reference models.

A detector's preset threshold was chosen by its authors for their datasets and architectures (DL-TND's
T = 0.75 for CIFAR-10 ResNets; the official README calls T a user knob).  An auditor who holds a few
models that are known to be clean - same task, same architecture, trained by themselves - can instead
set the threshold from them: each reference is scanned exactly as the suspect model will be, and the
threshold becomes the largest reference score, the smallest value at which no reference is flagged.

    cal = calibrate(DLTND(), [ref1, ref2, ref3], clean, generator=g)
    verdict = cal.detector.detect(suspect, clean, generator=g2)

Every detector here decides ``backdoored`` as ``score > threshold`` (Neural Cleanse: the largest anomaly
index of a below-median label; DL-TND: the largest similarity s_k; DF-TND: the top label's
max(margin ratio, margin / margin_scale, margin per mask pixel / efficiency_scale)), so the calibrated detector flags none of its references
(with ``fpr`` > 0: at most that fraction of them).  What that says about other clean models depends on
how many references there were: with n references, a new clean model of the same kind scores above all
of them with probability about 1 / (n + 1).

A detector's ``score_floor`` (DL-TND with ``reach``: -1, a label more than a quarter of whose images one
of the two perturbations leaves elsewhere) is a censored value: references that all sit on it say only that
they reached no label, not how high a clean model's score can go.  Their largest score, the floor,
would flag every model with any label above it, so then the preset threshold stays and
``Calibration.note`` says why; one reference above the floor is enough to calibrate as usual.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..._stats import threshold_at_fpr
from ..._validation import in_range
from ...roles import Detector, Progress

THRESHOLD_FIELDS = ("threshold", "anomaly_threshold")


@dataclass(frozen=True)
class Calibration:
    detector: Detector            # the input detector with its threshold field set to ``threshold``
    threshold: float              # the largest reference score
    field: str                    # the detector field that holds the threshold
    scores: tuple[float, ...]     # each reference model's score, in order
    preset: float                 # the detector's threshold before calibration
    note: str = ""                # why the preset was kept (every reference score on the detector's floor)


def calibrated_threshold(scores: Sequence[float], fpr: float, preset: float, floor: float | None) -> tuple[float, str]:
    """(threshold, note): the smallest threshold with at most ``fpr`` of ``scores`` above it - or the
    preset, with a note, when that threshold is on the score floor (module docstring)."""
    threshold = threshold_at_fpr(torch.tensor(list(scores), dtype=torch.float64), fpr)
    if floor is not None and threshold <= floor:
        return float(preset), (f"every reference score that counts is on the floor {floor:g} (no label reached), "
                               f"which says nothing about how high a clean score goes: preset {preset:g} kept")
    return threshold, ""


def threshold_field(detector: Detector) -> str:
    """The dataclass field that holds ``detector``'s decision threshold."""
    names = {f.name for f in dataclasses.fields(detector)} if dataclasses.is_dataclass(detector) else set()
    for name in THRESHOLD_FIELDS:
        if name in names:
            return name
    raise TypeError(f"calibrate: {type(detector).__name__} has no threshold field (looked for "
                    f"{', '.join(THRESHOLD_FIELDS)}); it cannot be calibrated.")


def calibrate(detector: Detector, references: Sequence[torch.nn.Module], clean=None, *, fpr: float = 0.0,
              generator: torch.Generator | None = None, progress: Progress = None) -> Calibration:
    """Scan every reference model with ``detector`` and set its threshold to the largest score (``fpr`` = 0;
    otherwise the smallest threshold with at most ``fpr`` of the reference scores above it).

    ``clean``: the data the detector will get for the suspect model (None for data-free detectors).
    Each reference is scanned with a fresh copy of ``generator``'s state, so it sees the same random
    draws as a scan of the suspect model that starts from that state."""
    field = threshold_field(detector)
    in_range("calibrate", "fpr", fpr, 0.0, 1.0, hi_open=True)
    references = list(references)
    if not references:
        raise ValueError("calibrate needs at least one known-clean reference model; got none.")
    state = generator.get_state() if generator is not None else None
    scores = []
    for i, ref in enumerate(references):
        g = None
        if state is not None:
            g = torch.Generator(device=generator.device)
            g.set_state(state)
        score = float(detector.detect(ref, clean, generator=g).score)
        if not math.isfinite(score):
            raise ValueError(f"calibrate: reference model {i} got a non-finite {type(detector).__name__} score "
                             f"({score}); check that it is a trained model of this task.")
        scores.append(score)
        if progress is not None:
            progress(i + 1, len(references))
    preset = float(getattr(detector, field))
    threshold, note = calibrated_threshold(scores, fpr, preset, getattr(detector, "score_floor", None))
    try:
        tuned = dataclasses.replace(detector, **{field: threshold})
    except ValueError as e:
        raise ValueError(f"calibrate: the threshold from the reference scores ({', '.join(f'{s:.4g}' for s in scores)}) "
                         f"is {threshold:.4g}, which {type(detector).__name__} does not accept: {e}  A reference that "
                         "scores this low is probably not a trained model of this task.") from e
    return Calibration(detector=tuned, threshold=threshold, field=field, scores=tuple(scores), preset=preset,
                       note=note)
