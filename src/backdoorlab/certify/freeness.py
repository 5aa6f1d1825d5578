"""Verifying backdoor-freeness, problem 1 (Pham & Sun, "Verifying Neural Networks Against Backdoor
Attacks", CAV 2022; seed 000, "Verifying Backdoor-Freeness").

Threat model: an attacker may overwrite the pixels S of a trigger region with any values in
[lo, hi]; the question is whether ONE such trigger t, shared by all images, flips every x in X.

    Problem 1:  is there t in [lo, hi]^|S| with argmax N(x[S := t]) = y_t for all x in X ?   (P1)

Per target and per trigger position (all positions when the spec is a family):
 1. CROWN/DeepPoly bounds (``bounds``) of every layer with the trigger box free, per image; if
    ub(z_t - z_j) < 0 for some image and some j, that image alone refutes the position.  Images
    are tried in growing groups (1, 1, 2, 4, ...) on the positions still open, and the bounds are
    shared by all targets, so a clean network costs about one image's bounds per position.
 2. Joint LP over the shared t with the triangle relaxation (``_lp``), as a feasibility problem.
    Infeasible => ``verified`` -- but only after HiGHS' Farkas ray is checked in exact rational
    arithmetic against OUR matrix (a solver verdict alone is a claim, not a proof).
 3. Feasible => its t is tried by a real forward pass; then a PGD attack with restarts.
 4. MILP with big-M from the same bounds (complete for these bounds).  Feasible => its t is checked
    concretely; infeasible is a claim that is proved by splitting the trigger box (branch and bound
    with fresh CROWN bounds and Farkas-checked LPs on each piece) or else reported ``unknown``.

Statuses: ``verified`` (proof: every position refuted), ``falsified`` (a concrete trigger that a
real forward pass confirms on every x in X), ``boundary`` (the best trigger only *ties* the target
with another class, up to ``tie_tolerance``: neither a proof nor a backdoor), ``unknown``.

Soundness choices (documented as the issue asks):
 * Strict vs non-strict: argmax is strict, the LP/MILP use z_t - z_j >= 0, a superset, so
   "infeasible" is sound; a trigger is claimed only when every image's margin z_t - max_j z_j
   exceeds ``tie_tolerance`` in BOTH the model's own forward pass and float64 arithmetic.  A
   solution whose margin is within the tolerance -- and no trigger with margin >= 2x tolerance in a
   second MILP -- is ``boundary`` (exercise 4's third network is the regression test).
 * Floating point: bounds in float64 padded outward (``bounds.PAD``); first-layer rows are ranged
   by the same pad; triangle slopes and intercepts rounded up; the pixel box is mapped to
   normalised space with outward rounding, so no weight is ever rounded.  The proof is about the
   real-arithmetic semantics of the float weights (Zombori et al. ICLR 2021 show float32 runs can
   differ by tiny amounts); counterexamples are about the model's own forward pass.
 * Solver tolerances (HiGHS primal feasibility 1e-7, dropping |a_ij| <= 1e-9) cannot create a false
   ``verified``: the exact Farkas check uses our matrix.  Time limits give ``unknown``.
 * Bounds are recomputed per position and per box piece, never reused.
 * With ``labels``, X excludes misclassified images and images of the target class (Socrates' rule).

Deviations: the triangle relaxation replaces DeepPoly's single lower line (strictly tighter); the
joint LP is solved without the per-image LPs (the joint one implies them); the attack is PGD on
the hinge sum (not L-BFGS-B with numerical gradients); MILP-infeasible is turned into a proof by
box splitting instead of being trusted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .._validation import positive
from ..roles import Certifier, Progress
from .bounds import relu_network
from .region import TriggerRegion, patch_family  # noqa: F401  (re-exported)

STATUSES = ("verified", "falsified", "boundary", "unknown")


@dataclass(frozen=True)
class PositionResult:
    """The answer for one trigger position: ``method`` says what decided it (crown, lp, attack,
    milp, bab, milp-margin, ...)."""

    region: str
    status: str
    method: str
    margin: float | None = None  # smallest target margin of the trigger found (if any)
    trigger: torch.Tensor | None = None  # (|S|,) pixel values of the trigger found


@dataclass(frozen=True)
class FreenessCertificate:
    """Problem 1's answer for one target: ``verified`` iff every position is refuted."""

    status: str
    target: int
    spec: str
    n_images: int
    image_indices: tuple[int, ...]
    positions: tuple[PositionResult, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    region: TriggerRegion | None = None  # region of the counterexample (or of the boundary point)
    counterexample: torch.Tensor | None = None  # (|S|,) pixel values, checked on every x in X
    reason: str = ""

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """x with the counterexample trigger written in (raises when there is none)."""
        if self.region is None or self.counterexample is None:
            raise ValueError(f"FreenessCertificate has no trigger (status {self.status!r}).")
        return self.region.stamp(x, self.counterexample)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.positions:
            out[p.method] = out.get(p.method, 0) + 1
        return out

    def to_json(self) -> dict:
        return {"status": self.status, "target": self.target, "spec": self.spec, "n_images": self.n_images,
                "image_indices": list(self.image_indices), "positions_checked": len(self.positions),
                "decided_by": self.counts(), "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
                "trigger_region": self.region.name if self.region is not None else None,
                "counterexample": None if self.counterexample is None else self.counterexample.tolist(),
                "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class FreenessVerifier(Certifier):
    """Sound and (for small networks) complete decision of problem 1 (P1) for every target."""

    milp: bool = True  # run the complete MILP when the LP does not decide
    milp_time_limit: float = 60.0  # seconds per MILP
    lp_time_limit: float = 60.0  # seconds per LP
    attack_steps: int = 60  # PGD steps on t
    attack_restarts: int = 8  # PGD restarts (random starts in the box)
    split_budget: int = 64  # box pieces for turning a MILP 'infeasible' into a proof
    tie_tolerance: float = 1e-6  # |margin| <= this is a tie (boundary)
    stop_at_first: bool = True  # stop a target's scan at its first falsified position

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("milp_time_limit", "lp_time_limit", "tie_tolerance"):
            positive(name, f, getattr(self, f))
        for f in ("attack_restarts", "split_budget"):
            positive(name, f, getattr(self, f), integer=True)
        positive(name, "attack_steps", self.attack_steps, integer=True, allow_zero=True)

    def certify(self, model: torch.nn.Module, x: torch.Tensor, regions: TriggerRegion | Sequence[TriggerRegion],
                targets: int | Sequence[int] | None = None, labels: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None, progress: Progress = None,
                ) -> list[FreenessCertificate]:
        """One certificate per target (default: every class) for the images ``x`` (N, C, H, W).

        ``regions``: one TriggerRegion or a family (e.g. ``patch_family``), each position checked.
        ``labels``: when given, X for target y_t = images correctly classified with label != y_t."""
        from .._torch import eval_mode
        from ._search import FirstLayers, bounds_for, crown_scan, decide_position

        regions = [regions] if isinstance(regions, TriggerRegion) else list(regions)
        if not regions:
            raise ValueError("FreenessVerifier.regions must name at least one trigger region; got none.")
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not torch.isfinite(x).all():
            raise ValueError(f"FreenessVerifier images must be a finite (N, C, H, W) tensor; got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__!r}.")
        net = relu_network(model, x.shape[1:])
        n_cls = net.widths[-1]
        targets = list(range(n_cls)) if targets is None else ([targets] if isinstance(targets, int) else list(targets))
        for t in targets:
            if isinstance(t, bool) or not 0 <= int(t) < n_cls:
                raise ValueError(f"FreenessVerifier.target must be in [0, {n_cls}); got {t!r}.")
        for r in regions:
            r.check(tuple(x.shape[1:]))
        if labels is not None and (labels.dim() != 1 or len(labels) != len(x)):
            raise ValueError(f"FreenessVerifier labels must have shape ({len(x)},); got {tuple(labels.shape)!r}.")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        x = x.detach().cpu()
        spec = regions[0].name if len(regions) == 1 else f"{len(regions)} positions of {regions[0].name}"
        with eval_mode(model):
            preds = net.logits(net.normalise(x)).argmax(1)
            pool = torch.ones(len(x), dtype=torch.bool) if labels is None else labels.cpu() == preds
            X = x[pool]
            pool_idx = torch.nonzero(pool).flatten().tolist()
            rows = {t: ([k for k, i in enumerate(pool_idx) if labels is None or int(labels[i]) != t]) for t in targets}
            res: dict[int, list[PositionResult]] = {t: [] for t in targets}
            secs = {t: dict.fromkeys(("bounds", "lp", "attack", "milp", "split"), 0.0) for t in targets}
            live = {t: r for t, r in rows.items() if r}
            tb = time.perf_counter()
            first = FirstLayers(net, X)
            refuted = crown_scan(net, first, regions, live)
            for t in targets:
                secs[t]["bounds"] += (time.perf_counter() - tb) / max(1, len(live))
            done, total = 0, len(targets) * len(regions)
            for t in live:
                for p, r in enumerate(regions):
                    if self.stop_at_first and _found(res[t]):
                        break
                    if refuted[t][p]:
                        res[t].append(PositionResult(r.name, "verified", "crown"))
                    else:
                        tb = time.perf_counter()
                        fl = first.at(r, rows[t])
                        bd = bounds_for(net, [fl])
                        secs[t]["bounds"] += time.perf_counter() - tb
                        res[t].append(decide_position(self, net, model, X[rows[t]], r, fl, (bd.lower, bd.upper),
                                                      t, g, secs[t]))
                    done += 1
                    if progress is not None:
                        progress(done, total)
            out = []
            for t in targets:
                idx = tuple(pool_idx[k] for k in rows[t])
                results = res[t]
                if not idx:
                    out.append(FreenessCertificate("unknown", int(t), spec, 0, (), (), reason="no eligible images"))
                    continue
                status = _combine([p.status for p in results])
                hit = next((p for p in results if p.status == status), None) if status in ("falsified", "boundary") else None
                region = next(r for r in regions if r.name == hit.region) if hit is not None else None
                secs[t]["total"] = sum(secs[t].values())
                reason = {"verified": "every position refuted", "falsified": "trigger checked on every image",
                          "boundary": "the best trigger only ties the target",
                          "unknown": "some position undecided (time limit or no exact certificate)"}[status]
                out.append(FreenessCertificate(status, int(t), spec, len(idx), idx, tuple(results), secs[t], region,
                                               hit.trigger if hit is not None else None, reason))
        return out


def _found(results: list[PositionResult]) -> bool:
    return bool(results) and results[-1].status == "falsified"


def _combine(statuses: list[str]) -> str:
    if "falsified" in statuses:
        return "falsified"
    if "unknown" in statuses:
        return "unknown"
    if "boundary" in statuses:
        return "boundary"
    return "verified"


__all__ = ["FreenessCertificate", "FreenessVerifier", "PositionResult", "STATUSES", "TriggerRegion",
           "patch_family"]
