"""Verifying backdoor-freeness, problem 2: the statistical variant (Pham & Sun, CAV 2022; seed 000,
"Verifying Backdoor-Freeness: Part 2").

Problem 2: show that no trigger (in the given regions) has success rate >= Pr for target y_t.

    H0: some trigger flips a fraction theta >= Pr of the images to y_t.
    Under H0, K i.i.d. images are ALL flipped by that trigger with probability theta^K >= Pr^K, so
    a sound problem-1 verifier answers ``verified`` (UNSAT) on them with probability
        P[UNSAT | H0] <= 1 - Pr^K =: p                                                    (1)
The slides' "1 - Pr^K" is this bound (1): one UNSAT round is evidence against H0 with error <= p,
i.e. confidence Pr^K; N independent rounds with u UNSAT give the exact one-sided binomial p-value

    p-value = P[Binom(N, p) >= u],   reject H0 ("no backdoor with rate >= Pr") if <= alpha    (2)

(all N rounds UNSAT: p^N <= alpha, i.e. N >= log(alpha) / log(1 - Pr^K)).  N is fixed in advance
(default: the smallest N that can reject); the test stops early only when its verdict is already
certain (curtailment), which keeps the level exact.

Wald's SPRT as in Socrates: p0 = p + delta ("no backdoor"), p1 = p - delta ("backdoor"); each UNSAT
round multiplies the likelihood ratio by p1/p0, any other round (SAT with a low-rate trigger,
boundary, unknown) by (1-p1)/(1-p0); accept "no backdoor" at ratio <= beta/(1-alpha), "backdoor"
at >= (1-beta)/alpha.  Its alpha covers backdoors with rate >= (Pr^K + delta)^(1/K) (e.g. 0.903 for
Pr = 0.9, K = 5), because of the indifference region.

A round whose problem-1 answer is a concrete trigger evaluates it on the whole pool; rate >= Pr ends
the test with that trigger (``falsified``).  Images are drawn with replacement from the pool of
valid images (correctly classified, label != target), so the guarantee is about that pool's
distribution, not about the data distribution at large.

Why K stays small: one resistant image makes the joint problem infeasible, so a large K hides a real
backdoor whose success rate is below 100% (p = 1 - Pr^K -> 1: UNSAT rounds become worthless).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .._validation import in_range, one_of, positive
from ..roles import Certifier, Progress
from .freeness import FreenessVerifier
from .region import TriggerRegion


def round_error(rate: float, k: int) -> float:
    """(1): the largest probability that a round of k images is UNSAT although a trigger with
    success rate >= ``rate`` exists, 1 - rate^k."""
    return 1.0 - rate ** k


def binomial_p_value(unsat: int, rounds: int, rate: float, k: int) -> float:
    """(2): P[Binom(rounds, 1 - rate^k) >= unsat], summed exactly in rationals of the float p."""
    from fractions import Fraction

    if unsat <= 0:
        return 1.0
    p = Fraction(round_error(rate, k))
    return float(sum(math.comb(rounds, i) * p ** i * (1 - p) ** (rounds - i) for i in range(unsat, rounds + 1)))


def binomial_rounds(rate: float, k: int, alpha: float) -> int:
    """Smallest N with (1 - rate^k)^N <= alpha: all-UNSAT rounds needed by the binomial test."""
    p = round_error(rate, k)
    return 1 if p <= alpha else math.ceil(math.log(alpha) / math.log(p) - 1e-12)


def binomial_threshold(rounds: int, rate: float, k: int, alpha: float) -> int | None:
    """Smallest u with P[Binom(rounds, p) >= u] <= alpha (None: no u rejects)."""
    for u in range(0, rounds + 1):
        if binomial_p_value(u, rounds, rate, k) <= alpha:
            return u
    return None


@dataclass
class SPRT:
    """Wald's sequential probability-ratio test on UNSAT rounds, with Socrates' p0 / p1."""

    p0: float
    p1: float
    alpha: float = 0.01
    beta: float = 0.01
    log_ratio: float = 0.0

    @classmethod
    def for_rate(cls, rate: float, k: int, alpha: float = 0.01, beta: float = 0.01, delta: float = 0.01) -> "SPRT":
        p = round_error(rate, k)
        return cls(min(p + delta, 1 - 1e-12), max(p - delta, 1e-12), alpha, beta)

    def update(self, unsat: bool) -> str | None:
        self.log_ratio += math.log(self.p1 / self.p0) if unsat else math.log((1 - self.p1) / (1 - self.p0))
        return self.decision

    @property
    def decision(self) -> str | None:
        if self.log_ratio <= math.log(self.beta / (1 - self.alpha)):
            return "no-backdoor"
        if self.log_ratio >= math.log((1 - self.beta) / self.alpha):
            return "backdoor"
        return None

    def rounds_if_all_unsat(self) -> int:
        return math.ceil(math.log(self.beta / (1 - self.alpha)) / math.log(self.p1 / self.p0) - 1e-12)


@dataclass(frozen=True)
class StatisticalCertificate:
    """``verified``: no trigger with rate >= ``rate`` at confidence 1 - p_value (binomial) or with
    the SPRT's (alpha, beta); ``falsified``: a trigger with pool success rate >= ``rate``;
    ``backdoor-likely``: the SPRT accepted "backdoor" (no trigger with rate >= Pr in hand);
    ``undecided``: the test ran out of rounds or cannot reject."""

    status: str
    target: int
    rate: float
    images_per_round: int
    test: str
    rounds: int
    unsat_rounds: int
    outcomes: tuple[str, ...]
    images: tuple[tuple[int, ...], ...]
    round_error: float
    p_value: float | None
    confidence: float | None
    pool_size: int
    region: TriggerRegion | None = None
    trigger: torch.Tensor | None = None
    trigger_rate: float | None = None
    seconds: float = 0.0
    note: str = ("a large K can hide a real backdoor: one resistant image makes the joint problem "
                 "infeasible, so K stays small")

    def to_json(self) -> dict:
        return {"status": self.status, "target": self.target, "rate": self.rate, "K": self.images_per_round,
                "test": self.test, "rounds": self.rounds, "unsat_rounds": self.unsat_rounds,
                "outcomes": list(self.outcomes), "images": [list(i) for i in self.images],
                "round_error": self.round_error, "p_value": self.p_value, "confidence": self.confidence,
                "pool_size": self.pool_size, "trigger_region": self.region.name if self.region else None,
                "trigger": None if self.trigger is None else self.trigger.tolist(),
                "trigger_rate": self.trigger_rate, "seconds": round(self.seconds, 3), "note": self.note}


@dataclass(frozen=True, kw_only=True)
class StatisticalVerifier(Certifier):
    """Problem 2 on top of ``FreenessVerifier``: repeated rounds of K random images."""

    rate: float = 0.9  # Pr
    images_per_round: int = 5  # K
    test: str = "binomial"  # "binomial" (exact, fixed N) or "sprt" (Wald, as in Socrates)
    alpha: float = 0.01
    beta: float = 0.01  # SPRT only
    delta: float = 0.01  # SPRT indifference half-width
    rounds: int = 0  # binomial: N (0 = the smallest N that can reject); SPRT: the round cap
    max_rounds: int = 1000  # SPRT cap when rounds = 0
    verifier: FreenessVerifier = field(default_factory=FreenessVerifier)

    def __post_init__(self) -> None:
        n = type(self).__name__
        in_range(n, "rate", self.rate, 0, 1, lo_open=True, hi_open=True)
        positive(n, "images_per_round", self.images_per_round, integer=True)
        one_of(n, "test", self.test, {"binomial", "sprt"})
        for f in ("alpha", "beta"):
            in_range(n, f, getattr(self, f), 0, 0.5, lo_open=True, hi_open=True)
        in_range(n, "delta", self.delta, 0, 1, hi_open=True)
        positive(n, "rounds", self.rounds, integer=True, allow_zero=True)
        positive(n, "max_rounds", self.max_rounds, integer=True)

    def certify(self, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor,
                regions: TriggerRegion | Sequence[TriggerRegion], target: int, *,
                generator: torch.Generator | None = None, progress: Progress = None) -> StatisticalCertificate:
        """Run rounds on K images drawn (with replacement) from the valid images of (x, labels)."""
        from .bounds import relu_network

        t0 = time.perf_counter()
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        K, Pr = self.images_per_round, self.rate
        net = relu_network(model, x.shape[1:])
        preds = net.logits(net.normalise(x)).argmax(1)
        pool = torch.nonzero((preds == labels.cpu()) & (labels.cpu() != target)).flatten()
        if len(pool) == 0:
            raise ValueError(f"StatisticalVerifier needs correctly classified images whose label is not "
                             f"{target}; got none among {len(x)}.")
        p = round_error(Pr, K)
        if self.test == "binomial":
            N = self.rounds or binomial_rounds(Pr, K, self.alpha)
            need = binomial_threshold(N, Pr, K, self.alpha)
            sprt = None
        else:
            N = self.rounds or self.max_rounds
            need, sprt = None, SPRT.for_rate(Pr, K, self.alpha, self.beta, self.delta)
        outcomes: list[str] = []
        used: list[tuple[int, ...]] = []
        status = "undecided"
        trig = region = rate_hat = None
        while len(outcomes) < N:
            pick = pool[torch.randint(len(pool), (K,), generator=g)]
            used.append(tuple(int(i) for i in pick))
            cert = self.verifier.certify(model, x[pick], regions, targets=[target], generator=g)[0]
            outcome = "unsat" if cert.status == "verified" else cert.status
            if cert.status == "falsified":
                with torch.no_grad():
                    xs = cert.stamp(x[pool])
                    rate_hat = float((net.logits(net.normalise(xs)).argmax(1) == target).double().mean())
                if rate_hat >= Pr:
                    outcomes.append("trigger")
                    status, trig, region = "falsified", cert.counterexample, cert.region
                    break
                outcome = "sat-low-rate"
            outcomes.append(outcome)
            if progress is not None:
                progress(len(outcomes), N)
            u = outcomes.count("unsat")
            if sprt is not None:
                d = sprt.update(outcome == "unsat")
                if d is not None:
                    status = "verified" if d == "no-backdoor" else "backdoor-likely"
                    break
            elif need is not None and (u >= need or u + (N - len(outcomes)) < need):
                break
        u = outcomes.count("unsat")
        pv = conf = None
        if self.test == "binomial" and status != "falsified":
            pv = binomial_p_value(u, N, Pr, K)
            conf = 1.0 - pv
            status = "verified" if pv <= self.alpha else "undecided"
        elif sprt is not None and status == "verified":
            # Wald: accepting "no backdoor" when a backdoor of rate >= Pr exists has probability <= beta
            pv, conf = self.beta, 1.0 - self.beta
        return StatisticalCertificate(status, int(target), Pr, K, self.test, len(outcomes), u, tuple(outcomes),
                                      tuple(used), p, pv, conf, len(pool), region, trig, rate_hat if trig is not None
                                      else None, time.perf_counter() - t0)
