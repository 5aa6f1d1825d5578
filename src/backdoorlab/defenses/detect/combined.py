"""Run several detectors on one model with one shared data pass, and combine their verdicts.

Why: Neural Cleanse, DL-TND and DF-TND fail in different places (NC needs a small trigger and a
clean set; DL-TND one image per class; DF-TND no data but a trigger the penultimate neurons
respond to), so an auditor runs them all and wants one answer.

Shared data pass: ``clean`` is turned into (x, y) tensors once and the same tensors are handed to
every detector (DL-TND takes its one-image-per-class subset from them, DF-TND ignores them); with
``clean=None`` the detectors that need data are skipped and listed in the evidence.  Each detector
gets its own generator, seeded in order from the caller's generator (so the same seed gives the
same combined result).

Combined rule (``rule``), over the detectors that ran:
- ``"lead"`` (default): the verdict and suspects of the data-richest detector that ran (order
  ``PRIORITY``: Neural Cleanse, then DL-TND, then DF-TND, then any other in the given order); the
  others only add their votes to the evidence.  Score = lead score / threshold, threshold 1.
  Why this default: a detector's statistic is only as good as the data behind it (NC optimises
  over thousands of clean images, DL-TND over one per class, DF-TND over noise), and each
  detector's own threshold is a paper rule that is not calibrated against the others', so adding
  weaker detectors' votes can only trade false positives for detections in a way that a user
  cannot predict.  "lead" is, by construction, exactly as good as the strongest detector that could
  run, and still answers with DF-TND alone when no data is given (``scan --no-data``).  The choice
  was made on the first (undertrained) MNIST development population of ``benchmarks/detectors.py``
  (commit ed94328, cache ``runs/detectors/``), where no vote beat the lead; the evaluation
  population of ``benchmarks/population.py`` is disjoint from it and was not used to pick the rule.
- ``"agree"``: backdoored when at least ``quorum`` detectors (default 2, or 1 when only one ran)
  name the same suspect label; suspects are those labels, most-named first.  Detectors that err on
  different labels cancel; score = the largest label count plus the tie-breaker below.
- ``"vote"``: backdoored when at least ``quorum`` detectors say so (default: at least half
  of those that ran, rounded up: 2 of 3, 1 of 2, 1 of 1).  Suspects are the labels named by at least
  ``quorum`` detectors, most-voted first; when the quorum is met without an agreed label, the
  suspects of the detector with the largest score / threshold ratio.
- ``"any"``: backdoored when any detector says so (highest recall, false positives add up).
- ``"all"``: backdoored only when every detector says so (fewest false positives).
The combined score (vote / agree / any / all) is the number of detectors that flagged (agree: the
largest number naming one label) plus the mean of min(score/threshold, 2)/2 over detectors with a
positive threshold (a tie-breaker in [0, 1) for AUROC); the threshold is ``quorum - 0.5``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..._torch import generator_seed, new_generator
from ..._validation import one_of
from ...roles import Detector, Progress
from ...types import Verdict

RULES = ("lead", "agree", "vote", "any", "all")
PRIORITY = ("neural-cleanse", "dl-tnd", "df-tnd")  # data-richest first
DATA_FREE = ("df-tnd",)  # registry names of detectors that need no clean data


@dataclass(frozen=True, kw_only=True)
class CombinedEvidence:
    verdicts: dict[str, Verdict]          # name -> that detector's verdict
    seconds: dict[str, float]             # name -> wall time of its detect call
    skipped: tuple[str, ...]              # detectors not run (they need data and none was given)
    votes: dict[int, int]                 # label -> how many detectors named it
    rule: str
    quorum: int

    def table(self) -> tuple[list[str], list[list]]:
        rows = [[name, "BACKDOORED" if v.backdoored else "clean", ",".join(map(str, v.suspects)) or "-",
                 round(v.score, 4), round(v.threshold, 4), round(self.seconds[name], 2)]
                for name, v in self.verdicts.items()]
        rows += [[name, "skipped (needs data)", "-", None, None, None] for name in self.skipped]
        return ["detector", "verdict", "suspects", "score", "threshold", "seconds"], rows


@dataclass(frozen=True, kw_only=True)
class Combined(Detector):
    """Several detectors (``(name, detector)`` pairs) under one documented rule (module doc)."""

    detectors: tuple[tuple[str, Detector], ...]
    rule: str = "lead"
    quorum: int | None = None

    def __post_init__(self) -> None:
        one_of("Combined", "rule", self.rule, RULES)
        dets = tuple((str(n), d) for n, d in self.detectors)
        if not dets or not all(isinstance(d, Detector) for _, d in dets):
            raise ValueError(f"Combined.detectors must be a non-empty sequence of (name, Detector) pairs; "
                             f"got {self.detectors!r}.")
        if self.quorum is not None and (not isinstance(self.quorum, int) or not 1 <= self.quorum <= len(dets)):
            raise ValueError(f"Combined.quorum must be an int in [1, {len(dets)}]; got {self.quorum!r}.")
        object.__setattr__(self, "detectors", dets)

    @classmethod
    def from_names(cls, names, overrides: dict[str, dict] | None = None, **kw) -> "Combined":
        """Build from registry names (``DETECTORS``), e.g. ``["neural-cleanse", "dl-tnd", "df-tnd"]``."""
        from . import DETECTORS

        dets = []
        for n in names:
            if n not in DETECTORS:
                raise ValueError(f"Combined.detectors must name entries of DETECTORS {sorted(DETECTORS)}; got {n!r}.")
            dets.append((n, DETECTORS[n](**(overrides or {}).get(n, {}))))
        return cls(detectors=tuple(dets), **kw)

    def detect(self, model: torch.nn.Module, clean=None, *, generator: torch.Generator | None = None,
               progress: Progress = None) -> Verdict:
        shared = self._shared_tensors(clean)
        seeds = [generator_seed(generator) if generator is not None else i for i, _ in enumerate(self.detectors)]
        run = [(n, d, s) for (n, d), s in zip(self.detectors, seeds) if shared is not None or _data_free(n, d)]
        skipped = tuple(n for n, d in self.detectors if shared is None and not _data_free(n, d))
        if not run:
            raise ValueError(f"Combined.detect needs clean data for {list(skipped)}; "
                             "pass a clean set or include a data-free detector (df-tnd).")
        verdicts, seconds = {}, {}
        for i, (name, det, seed) in enumerate(run):
            cb = None if progress is None else _sub_progress(progress, i, len(run))
            t0 = time.perf_counter()
            verdicts[name] = det.detect(model, shared, generator=new_generator(seed), progress=cb)
            seconds[name] = time.perf_counter() - t0
        return self.combine(verdicts, seconds, skipped)

    def combine(self, verdicts: dict[str, Verdict], seconds: dict[str, float] | None = None,
                skipped: tuple[str, ...] = ()) -> Verdict:
        """The combined rule over already computed verdicts (the benchmark reuses it)."""
        n = len(verdicts)
        if self.rule == "lead":
            return self._lead(verdicts, seconds, skipped)
        default = min(2, n) if self.rule == "agree" else (n + 1) // 2
        quorum = {"any": 1, "all": n}.get(self.rule, self.quorum or default)
        quorum = min(quorum, n)
        flags = sum(v.backdoored for v in verdicts.values())
        votes: dict[int, int] = {}
        for v in verdicts.values():
            if v.backdoored:
                for s in v.suspects:
                    votes[int(s)] = votes.get(int(s), 0) + 1
        count = max(votes.values(), default=0) if self.rule == "agree" else flags
        backdoored = count >= quorum
        suspects: tuple[int, ...] = ()
        if self.rule == "agree":
            suspects = tuple(sorted((k for k, c in votes.items() if c >= quorum), key=lambda k: (-votes[k], k)))
        elif backdoored:
            agreed = sorted((k for k, c in votes.items() if c >= quorum), key=lambda k: (-votes[k], k))
            if agreed:
                suspects = tuple(agreed)
            else:
                best = max((v for v in verdicts.values() if v.backdoored), key=_ratio)
                suspects = tuple(best.suspects)
        ratios = [min(_ratio(v), 2.0) / 2 for v in verdicts.values() if v.threshold > 0]
        score = count + (sum(ratios) / len(ratios) * 0.999 if ratios else 0.0)
        evidence = CombinedEvidence(verdicts=dict(verdicts), seconds=dict(seconds or {k: 0.0 for k in verdicts}),
                                    skipped=tuple(skipped), votes=votes, rule=self.rule, quorum=quorum)
        return Verdict(backdoored=backdoored, score=float(score), threshold=quorum - 0.5,
                       suspects=suspects, evidence=evidence)

    def _lead(self, verdicts, seconds, skipped) -> Verdict:
        rank = {n: i for i, n in enumerate(PRIORITY)}
        order = sorted(verdicts, key=lambda n: (rank.get(n, len(PRIORITY)), list(verdicts).index(n)))
        lead = verdicts[order[0]]
        votes: dict[int, int] = {}
        for v in verdicts.values():
            for s in (v.suspects if v.backdoored else ()):
                votes[int(s)] = votes.get(int(s), 0) + 1
        evidence = CombinedEvidence(verdicts=dict(verdicts), seconds=dict(seconds or {k: 0.0 for k in verdicts}),
                                    skipped=tuple(skipped), votes=votes, rule=f"lead ({order[0]})", quorum=1)
        return Verdict(backdoored=lead.backdoored, score=float(_ratio(lead)), threshold=1.0,
                       suspects=tuple(lead.suspects), evidence=evidence)

    @staticmethod
    def _shared_tensors(clean):
        if clean is None:
            return None
        from ...data import ImageDataset, as_tensors

        if isinstance(clean, ImageDataset):
            return clean
        x, y = as_tensors(clean)
        return ImageDataset(x, y, getattr(clean, "info", None), name="Combined clean")


def _data_free(name: str, det: Detector) -> bool:
    return name in DATA_FREE or getattr(det, "data_free", False)


def _ratio(v: Verdict) -> float:
    return v.score / v.threshold if v.threshold > 0 else float(v.backdoored)


def _sub_progress(progress, i: int, n: int):
    def cb(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        progress(int(1000 * (i + frac)), 1000 * n)
    return cb
