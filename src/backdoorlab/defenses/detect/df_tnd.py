"""DF-TND: the data-free TrojanNet detector (Wang, Zhang, Liu, Chen, Xiong, Wang, ECCV 2020,
"Practical detection of trojan neural networks: data-limited and data-free cases"; seed 003;
official code github.com/wangren09/TrojanNetDetector, ``DFTND/main_dftnd.ipynb`` and
``DFTND/robustness_lib/robustness/attacker.py``).

Threat model: the defender holds only the model's weights - no clean data at all - and asks
whether some label k is a Trojan target.  A TrojanNet has penultimate neurons that respond
unexpectedly strongly to the trigger, so maximising the neurons' response from random-noise
inputs recovers a trigger-like perturbation, and that perturbation raises the target's logit far
more than any other label's.

With x̂(m, δ) = (1 - m) * x + m * δ and r(x) in R^d the penultimate neurons (``model.features``):

    (6) maximize_{m, δ, w}  Σ_{i=1..d} w_i r_i(x̂(m, δ)) - λ ||m||_1
        subject to {δ, m} in C (0 <= m <= 1, 0 <= δ <= 1),  0 <= w <= 1,  1^T w = 1,
        averaged over N random-noise inputs x_1..x_N (each with its own (m_i, δ_i) at first);
    (7) L_k = (1/N) Σ_i [ f_k(x̂_i(p^(i))) - f_k(x_i) ]   for every label k (f = logits).

The paper (and its notebook) solves eq. 6 once and declares k a target when L_k > T (T = 100 logits
for its CIFAR-10 ResNet-50).

What we do (the choices below were made on a development population, ``runs/detectors``: 10
infected + 10 clean MNIST badnets-cnn models, never the evaluation population of
``benchmarks/population.py``; scripts and logs in ``runs/dftnd-calib``):

1. Noise inputs uniform in [0, ``noise_max``] = [0, 0.1], not [0, 1].  Applying the TRUE trigger
   to uniform [0, 1] noise raises the target's logit by ~0 for the single-pixel, BadNets-pattern
   and blend backdoors of MNIST models (the bright noise already covers the pixel / drowns the
   pattern; the noise itself is often classified as the target), so no recovered trigger can show
   them; on U[0, 0.1] the true trigger's margin is 6-31 logits for every working backdoor
   (``runs/dftnd-calib/oracle2.py``).  Low-amplitude noise is near the dark MNIST background; for
   data whose inputs are not dark, re-check ``noise_max`` with that script.
2. ``starts`` = 3 maximisations of eq. 6 per label k (each on its own N noise inputs and δ start), all
   K x 3 of them rows of one batched forward (K x 3 x N images per step); per label the start whose
   trigger gave the largest margin s_k (point 4) is the one reported (``select="margin"``, eighth
   session; the sixth session's ``select="objective"`` reported the start with the largest eq. 6
   objective; one start before that; see below).  In label k's problem w starts on the neurons that
   raise label k (w proportional to the positive part of the head's row k) and stays on the simplex
   restricted to them.  A single
   free w concentrates on whichever neuron noise excites most (in clean models and infected
   ones alike: strokes that draw a digit), and the trigger's neurons were rarely the ones chosen;
   the per-label starts put a maximisation on the trojan neurons of the target (their strongest
   head weight is the target's).  w stays a simplex weight over neurons as eq. 6 asks.
3. λ = 0.1 (per-image mean ||m||_1), reached by a linear warm-up from 0 over the first half of the
   iterations (``lam_warmup``): with sign steps and λ applied from the start, every mask pixel's
   gradient is below λ at the noise inputs and the mask collapses to 0 before the trigger forms
   (λ = 0.1 and 0.2 without warm-up: mask L1 <= 0.1 on all 20 dev models); with warm-up the mask grows
   first and λ then prunes it.  At λ = 0.03 the maximisation preferred large strokes (mask L1
   37-85) whose response exceeds the trigger's.
4. Detection statistic: label k's margin s_k = L_k - max(0, max_{j != k} L_j), all read in row k
   (label k's own maximisation).  Clean models also have labels whose maximisation draws a
   digit-like stroke that raises that label alone (s_k up to 13 logits on clean MNIST models),
   while the trojan label's margin is several times every other label's.  Rule: flag the top label
   k* when s_k* > T * max(1, max_{j != k*} s_j) (``ratio_rule``; runner-up margins below 1 logit
   count as 1 logit, so a tiny lone margin is not a trojan) - or when s_k* > T_abs logits, the
   paper's own absolute rule on the margin (T_abs = T * ``margin_scale``; added in the fourth
   session, see below) - or when a label's margin per mask pixel s_k / max(1, ||m_k||_1) exceeds
   T_eff (T * ``efficiency_scale``; added in the fifth session, see below).  The MAD anomaly index of the s_k
   (Neural Cleanse's rule) was tried first: clean models whose margins split into a negative and a
   positive group reach 3.7 with 3 labels "flagged", and the hijacked rows of an infected model
   (other labels' maximisations that also found the trigger, margin << 0) inflate the MAD.

How the one-start T = 3.5 was chosen (superseded by the sixth session's three starts and T = 2.5, below;
never on the evaluation population): with these defaults (generator seed 0) on 12
clean MNIST badnets-cnn calibration models - ``runs/population/calib-s0..3`` (the population's own
recipe, other seeds) and ``runs/dftnd-calib/{calib,full}-s500..503`` (12,000-image subset / full
split, 2 epochs) - the top ratio was 1.02-1.74.  T = 3.5 is that largest ratio doubled and rounded
up to a half.  On the development population (prototype ``runs/dftnd-calib/v2.py``, same
algorithm): clean 1.11-2.54 (0 of 10 above T); the seven working backdoors (ASR >= 90%: 3x3 / 4x4
squares, BadNets patterns, a noise blend) 3.9-10.2, all flagged at the true target; the three whose
backdoor had failed (ASR < 10%) 1.06-1.71.  On the 8x8 digits CNN of the tests the clean twin stays
below T and the planted one-pixel neuron far above it (``tests/defenses/detect/test_df_tnd.py``).

How T_abs was chosen, and why it exists: on the evaluation population the ratio rule missed a 4x4
square whose target margin was 29.8 logits, because a clean attractor label (2, a stroke) had 9.1 -
the ratio (3.28) fell just under T.  The paper flags L_k > T outright; no clean calibration model's
top margin exceeded 13.3 logits (the same 12 models as T; 3.5-13.3), so T_abs = 27.0 is that largest
margin doubled and rounded up to a half, T's recipe.  This criterion was added AFTER the evaluation
failures were seen, so the evaluation population no longer tests it blind; a second population
with fresh seeds (``benchmarks/population.py --population b``) was trained after T_abs was fixed
and is its blind test (``benchmarks/results/detectors_b.md``).  The fourth session's score was
max(ratio, s_k* / margin_scale) with margin_scale = T_abs / T = 27 / 3.5 logits, so "score > T" is
the whole rule; a new T (``calibrate``) moves T_abs with it (the fifth session added a third term,
below, in the same way).
Result: evaluation population 8/10 detected, 1/10 clean flagged (7/10 without T_abs); the blind
population b 7/10 (6 at the right target), 0/10 - the issue's 80% is NOT reached blind.  Its misses
are the two blends and a single pixel whose maximisations raise the target by 2.4-8.9 logits while a
clean attractor label reaches 3.7-4.4.  Tried on the 8 working development backdoors, the 10
development clean models and the 12 calib-s0..11 references, with T and T_abs re-derived by the
recipe from those references: the default found 5/8 at 0/10 clean flagged, a 2.7x budget (400 + 400
iterations) 5/8 at 1/10, 3x the noise inputs (30) 6/8 at 0/10 - no clear gain, so the defaults stay
(developer script ``runs/dfprobe.py``, not in the repository).

How T_eff was chosen, and why it exists (fifth session): population b's single-pixel miss raised its
target by 8.9 logits with a mask of L1 0.93 - one pixel - and its 10%-blend miss by 2.4 logits with
L1 2.2, while every clean attractor needs a stroke: on the 12 calibration models of
``population.calibration()`` (``runs/population/calib-s0..11``, the references of ``scan --reference``
in the benchmark; not T's 12, which were partly the ``dftnd-calib`` models) the largest margin
per mask pixel, s_k / max(1, ||m_k||_1), was 0.46 logits per pixel (their margins of 2.6-10.1 logits
come with masks of L1 11-36).  A margin bought with a tiny mask is what eq. 6's λ||m||_1 term looks
for (Neural Cleanse's small-trigger premise), and neither the ratio nor the absolute margin sees it.
T_eff = 1.0 logit per mask pixel is that 0.46 doubled and rounded up to a half, T's recipe again, and
the score gains a third term, efficiency_k / efficiency_scale with efficiency_scale = T_eff / T.  This
was added AFTER population b's misses were seen, so b no longer tests it blind; population c (fresh
seeds again, ``--population c``) was trained after T_eff was fixed and is its blind test
(``benchmarks/results/detectors_c.md``).  Read from the cached evidence of a and b (the maximisation
is unchanged, so the new rule is a function of it): a stays 8/10 detected, 1/10 clean flagged (no
verdict there depends on the new term); b becomes 9/10 (8 at the right target), 0/10
(pixel-br-t0 at 8.87 per pixel, blend10-t8 at 1.11 - just above T_eff); the clean models of a reach
at most 0.41 per pixel, those of b 0.43 (c: 0.45).  Blind result on population c: 7/10 detected (all at the right
target), 1/10 clean flagged (by the ratio, 4.23) - the issue's 80% is again NOT reached at the preset
T; no verdict there turned on T_eff (c's one single-pixel model with a one-pixel mask, 9.1 logits,
also had ratio 9.15), its misses being the two blends (ratio 3.29; a margin of 0.7) and the centre
square (margin -7.7 at its target).  With T calibrated on the 12 references (``calibrate``: T = 2.56)
c gives 8/10 at 1/10.  A known weakness of the term: it lets a small margin count when its mask is
tiny (the ratio's 1-logit floor does not apply to it) - a 1.01-logit margin with mask L1 <= 1 is
flagged at the preset, and after calibration to T = 2.56 (T_eff 0.73) a 0.74-logit one; c's
blend10-t8 (margin 0.70 at L1 1.11) shows margins of that size with one-pixel masks do occur.  A
floor on the term would be a new rule and needs a new blind population.

Three starts and T = 2.5 (sixth session): the score's worst noise is in the clean models.  Rerun with
two more generator seeds (developer scripts ``runs/dfprobe6.py``, ``runs/dfan6*.py``, not in the
repository), a single start's top clean score
moved from 2.56 to 3.11 to 10.14 on the same 12 references (one maximisation whose runner-up label
collapsed to 0.5 logits, a ratio of 10) and up to 9.87 on the 30 clean models of populations a-c, while
the infected targets' margins moved little (blend10-t8 of a: 8.4, 8.4, 8.7 logits).  Eq. 6 is a
non-convex maximisation; keeping, per label, the best of 3 starts (by eq. 6's own objective, not by
the detection score; the eighth session reports the start with the largest margin instead, below) is the
usual remedy.  Recombined offline from those three seeded runs (best of 3
by objective), the clean tail shrank: on populations a, b and c with the 12 references (42 clean
models) the top clean scores were 3.31, 2.85, 2.58, 2.42, ... instead of 9.87, 6.97, 5.82, ... for
single starts.  T = 2.5 was then chosen on those offline scores - populations a, b, c are development
data now, no longer blind - as the lowest T on a 0.1 grid keeping each population at <= 1 clean model
flagged (offline: a 9/10 at the right target with 1/10 clean flagged, b 8/10 and 0/10, c 8/10 and 0/10;
T = 2.4 flags 2 of a's clean models, T = 3.0 detects 8, 8, 8).  The criteria's scales are those fixed
at T = 3.5, so T_abs = 19.3 logits and T_eff = 0.71 logits per mask pixel.
Measured with the sixth session's library code (3 starts in one batch, generator seed 0 as ``scan --seed 0``; its draws
differ from the offline recombination): the 12 references score 1.27-1.91; population a 10/10 detected
(9 at the right target) with 3/10 clean flagged (ratios 3.60, 5.04, 3.59 - the tail shrank but did not
go), b 9/10 (8) with 0/10, c 8/10 (8) with 0/10. Population d (``benchmarks/population.py --population
d``), declared in e52cdfb and trained before the rule was fixed (16cbd90), is its blind test
(``benchmarks/results/detectors_d.md``): 9/10 detected, all at the right target (the 10% blend only
just: score 2.51; the miss: the centre square, score 2.08, missed or mislabelled in every population),
and 2/10 clean models flagged (scores 3.92 and 2.77) - the issue's bar (>= 80%, <= 2 false positives)
met on d, the false positives at its limit, and missed on a by one false positive. The fifth session's
rule (one start, T = 3.5) on d with the same seed: 6/10 detected, 0/10 clean flagged - its single
maximisations found neither BadNets pattern (scores 1.57 and 1.18; three starts: 3.32 and 3.73) nor the
10% blend. Cost: three times the single start's work (K x 3 x N images per step); in the detection
tables 1.4-2.7x its wall time (24-78 s per MNIST model on one thread while other jobs shared the 2 cores).

The start with the largest margin (eighth session): on population a the three-start rule still flagged 3 clean
models, and its clean false positives and its weakest detections had the same ratio, margin and mask size, so
no threshold on the evidence it kept could separate them.  What the ratio compares is label k's margin
against every other label's - each read in ONE of that label's three starts, the one with the largest eq. 6
objective.  Eq. 6 scores neuron responses, not the margin, and in the clean false positives the start kept
for the runner-up labels was often not the one whose stroke raised them most (a's clean-s0: the start kept for
label 5 had a margin of -2.1, its other two starts 2.1 and 4.3, so the ratio's denominator was label 2's 2.0
and the top label's 7.1 made a ratio of 3.6 - with label 5's 4.3 it is 1.7), so the denominator - and the
ratio - rested on one draw per label.  Reporting for EVERY label the start whose trigger gave it the largest
margin estimates each label's margin as the best of its S maximisations, on both sides of the ratio: a Trojan
target keeps its margin (the trigger is found in most starts: in all 45 working non-centre backdoors of a-e at
least 2 of the 3 starts reach half the target's best margin), a clean model's runner-up labels get theirs.
The maximisation, its cost, T = 2.5 and the criteria's scales are unchanged; only the reported start per label
is.  Chosen with populations a-e and the 12 references in view (developer script ``runs/dfprobe8.py``, not in
the repository: the library's maximisation with generator seed 0, keeping every start; it reproduces the
cached sixth-session verdicts exactly), reading both rules on the same maximisations (objective -> margin;
detected / clean flagged at T = 2.5): a 10/10, 3 -> 10/10, 0 (top clean scores 5.04, 3.60, 3.59 -> 2.16, 1.98,
1.69); b 9/10, 0 -> 9/10, 0; c 8/10, 0 -> 8/10, 0; d 9/10, 2 -> 9/10, 1; e 8/10, 2 -> 8/10, 2 (e's clean-s0
and clean-s1 give label 5 a margin of 8.2-11.7 logits in all three starts - a reproducible stroke, not a lucky
draw, so the new choice cannot clear them: 3.13 -> 3.00 and 2.94 -> 3.28); the 12 references 1.91 -> 1.88 at
most.  Population f, declared (9e5db6f) and trained before this choice was fixed, is its blind test
(``benchmarks/results/detectors_f.md``): 9/10 detected, all at the right target (the miss: the centre square),
and 1/10 clean flagged (clean-s2, label 4, ratio 3.50); the sixth-session choice on the same runs: 10/10 (9 at
the right target), 1/10.  The library's re-run of a-e gave the probe's numbers exactly (112 verdicts).  A cost
of the choice: it selects on the statistic itself, so a label
whose margin is noise gets the luckiest of S draws; that is symmetric over labels (the runner-up gets its
luckiest draw too), which is what the ratio needs.  ``select="objective"`` restores the sixth session's rule;
both are read from the same run by ``decide`` (``start_increase``, ``start_mask_l1`` and ``start_objectives``
are kept in the evidence).

Solver (as the official ``attacker.py``): projected sign-gradient ascent with step ``step_size`` on
δ and m; after each step m is soft-thresholded by step_size * λ and clipped to [0, 1], δ clipped to
[0, 1]; w takes a step and is projected onto the simplex. After ``steps`` iterations each problem's
(label and start) per-input (m_i, δ_i) are averaged and every input restarts from that average for
``refine_steps`` more (as official). L_k of eq. 7 is read on the refined per-input perturbations.

Deviations:
- Noise distribution, per-label maximisations, λ warm-up and the ratio rule (points 1-4 above)
  instead of U[0, 1]-like noise, one maximisation and the absolute L_k > T alone (kept as T_abs on
  the margin, beside the ratio); the margin-per-mask-pixel criterion T_eff is ours, not the paper's.
  The rule names at most one suspect (the top-scoring label), so a model with two target labels is
  flagged for the stronger one.
- Budget: 10 noise inputs per label and start (the official code: 10 in all), 150 + 150 iterations at step 0.02
  (official notebook: 1000 + 1000 at step 0.1, CIFAR-10 / ResNet-50 on a GPU); λ = 0.1 on the
  per-image mean ||m||_1 (official: γ = 1e-3 on the batch total, no warm-up).  Cost: K x 3 x N
  images per step (3 starts per label), 3K times the official code's single maximisation per step.
  The eq. 6 objective kept per start (and used by ``select="objective"``) is the one of the last
  iteration's forward, just before its final update.
- Several starts per label, each label reported by its start with the largest margin (point 2 and the
  eighth session above): the paper solves eq. 6 once.
- w: the official code takes sign steps on w, which (all responses being >= 0) keep w uniform over
  the active neurons; a step proportional to the gradient (normalised by its largest entry) lets w
  single out neurons as eq. 6 means.
- The mask is one value per pixel shared by the channels (Neural Cleanse's m); official: per
  channel.  Start: m = ``mask_init``, δ uniform random (official: both 0; δ bounded in [-1, 1]
  and the stamped image clipped).
- Penultimate responses are ``model.features(x)`` (after their ReLU); the official code passes
  gradients through that ReLU (``fake_relu``).
- Noise inputs drawn from the caller's generator (official: a stored noise tensor plus a fixed
  N(0, 1e-6 ** 2) jitter, omitted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..._torch import device_of, eval_mode, frozen, generator_seed, new_generator
from ..._validation import in_range, positive
from ...roles import Detector, Progress
from ...triggers import PatchTrigger
from ...types import Verdict

THRESHOLD = 2.5  # T on the score (3 starts, sixth session; 3.5 with one start before); module docstring
# The criteria's scales stay those fixed with one start at T = 3.5 (T_abs 27 logits, T_eff 1 logit per pixel):
MARGIN_SCALE = 27.0 / 3.5  # logits per unit of T: T_abs = T * margin_scale (19.3 logits at T = 2.5)
MARGIN_THRESHOLD = THRESHOLD * MARGIN_SCALE  # logits: T_abs on the top margin itself (the paper's absolute rule)
MARGIN_FLOOR = 1.0  # logits: a runner-up margin below this counts as this
EFFICIENCY_SCALE = 1.0 / 3.5  # logits per mask pixel per unit of T: T_eff = T * efficiency_scale (0.71 at 2.5)
EFFICIENCY_THRESHOLD = THRESHOLD * EFFICIENCY_SCALE  # T_eff on margin / mask L1 (fifth session; module docstring)
MASK_FLOOR = 1.0  # pixels: a mask L1 below this counts as this in the efficiency
SELECT = ("margin", "objective")  # how a label's reported start is chosen among its S starts (module docstring)


@dataclass(frozen=True, kw_only=True)
class DFTNDEvidence:
    """What DF-TND measured: S maximisations per label k; per label its reported start (rows), every label's
    increase (columns), and every start's measurements (``start_*``)."""

    logit_increase: torch.Tensor   # (K, K) [k, j]: L_j of eq. 7 under the trigger of label k's reported start
    margin: torch.Tensor           # (K,) s_k = L_k - max(0, max_{j != k} L_j) in row k
    ratio: torch.Tensor            # (K,) s_k / max(floor, max_{j != k} s_j)
    efficiency: torch.Tensor       # (K,) s_k / max(mask_floor, mask L1_k): margin per mask pixel
    score: torch.Tensor            # (K,) max(ratio_k, s_k / margin_scale, efficiency_k / efficiency_scale)
    objective: torch.Tensor        # (K,) eq. 6 at the end of each label's chosen start
    start_objectives: torch.Tensor  # (K, S) eq. 6 at the end of every start of every label
    chosen_start: torch.Tensor     # (K,) the start reported for label k (``select``: largest margin or eq. 6)
    mask_l1: torch.Tensor          # (K,) mean ||m_i||_1 of each label's per-input masks (chosen start)
    start_increase: torch.Tensor   # (K, S, K) [k, s, j]: L_j of eq. 7 under start s of label k's maximisation
    start_mask_l1: torch.Tensor    # (K, S) mean ||m_i||_1 of every start of every label
    start_margin: torch.Tensor     # (K, S) s_k read in every start of label k's maximisation
    select: str                    # how each label's start was chosen: "margin" or "objective"
    trigger: PatchTrigger          # the top label's (m, δ), averaged over its noise inputs
    neuron_weights: torch.Tensor   # (d,) w of the top label's maximisation (on the simplex)
    top_neurons: tuple[int, ...]   # neurons with the largest weights in it
    noise_inputs: int              # N

    @property
    def labels(self) -> tuple[int, ...]:
        return tuple(range(len(self.margin)))

    @property
    def anomaly_indices(self) -> tuple[float, ...]:
        """Per-label score on the threshold's scale (``scan`` plots it against the threshold)."""
        return tuple(float(a) for a in self.score)

    def table(self) -> tuple[list[str], list[list]]:
        rows = [[k, round(float(self.logit_increase[k, k]), 3), round(float(s), 3), round(float(a), 3),
                 round(float(n), 1), round(float(e), 3)]
                for k, (s, a, n, e) in enumerate(zip(self.margin, self.ratio, self.mask_l1, self.efficiency))]
        return ["label", "logit increase L_k", "margin s_k", "ratio to next", "mask L1", "margin per mask pixel"], rows

    def to_json(self) -> dict:
        return {"labels": list(self.labels), "logit_increase": self.logit_increase.tolist(),
                "margin": self.margin.tolist(), "ratio": self.ratio.tolist(),
                "efficiency": self.efficiency.tolist(), "score": self.score.tolist(),
                "objective": self.objective.tolist(), "start_objectives": self.start_objectives.tolist(),
                "chosen_start": self.chosen_start.tolist(), "mask_l1": self.mask_l1.tolist(),
                "start_increase": self.start_increase.tolist(), "start_mask_l1": self.start_mask_l1.tolist(),
                "start_margin": self.start_margin.tolist(), "select": self.select,
                "trigger_l1": self.trigger.l1(), "top_neurons": list(self.top_neurons),
                "noise_inputs": self.noise_inputs}


@dataclass(frozen=True, kw_only=True)
class DFTND(Detector):
    """Data-free TrojanNet detector (ECCV 2020, section 5).  ``clean`` is ignored (may be None)."""

    data_free: ClassVar[bool] = True  # needs no clean data (``Combined`` and ``scan --no-data``)

    noise_inputs: int = 10          # N random-noise inputs per label and start (the official code uses 10)
    starts: int = 3                 # S independent maximisations per label; one per label is reported (select)
    select: str = "margin"          # per label, the start with the largest margin s_k ("objective": largest eq. 6)
    noise_max: float = 0.1          # noise inputs uniform in [0, noise_max]
    steps: int = 150                # sign-gradient iterations with per-input (m_i, δ_i)
    refine_steps: int = 150         # iterations from the averaged (m, δ), per input again
    step_size: float = 0.02         # sign-gradient step on δ and m (w: normalised gradient step)
    lam: float = 0.1                # λ: weight of ||m||_1 (per-image mean)
    lam_warmup: float = 0.5         # λ rises linearly from 0 over this fraction of all iterations
    threshold: float = THRESHOLD    # T: flag the top label when its margin exceeds T times the next one
    margin_scale: float = MARGIN_SCALE  # ... or when its margin exceeds T * margin_scale logits (27 at T = 3.5)
    efficiency_scale: float = EFFICIENCY_SCALE  # ... or margin per mask pixel above T * efficiency_scale (1.0)
    mask_init: float = 0.1          # initial m (δ starts uniform random)

    def __post_init__(self) -> None:
        name = type(self).__name__
        positive(name, "noise_inputs", self.noise_inputs, integer=True)
        positive(name, "starts", self.starts, integer=True)
        if self.select not in SELECT:
            raise ValueError(f"{name}.select must be one of {', '.join(map(repr, SELECT))}, got {self.select!r}: "
                             "'margin' reports each label's start with the largest margin (the default), "
                             "'objective' the start with the largest eq. 6 objective (the sixth session's rule).")
        in_range(name, "noise_max", self.noise_max, 0.0, 1.0)
        positive(name, "noise_max", self.noise_max)
        positive(name, "steps", self.steps, integer=True)
        positive(name, "refine_steps", self.refine_steps, integer=True, allow_zero=True)
        positive(name, "step_size", self.step_size)
        positive(name, "lam", self.lam, allow_zero=True)
        in_range(name, "lam_warmup", self.lam_warmup, 0.0, 1.0)
        positive(name, "threshold", self.threshold)
        positive(name, "margin_scale", self.margin_scale)
        positive(name, "efficiency_scale", self.efficiency_scale)
        in_range(name, "mask_init", self.mask_init, 0.0, 1.0)

    def implied_thresholds(self, threshold: float | None = None) -> dict[str, float]:
        """The criteria's own thresholds at T = ``threshold`` (default: this detector's T): T_abs in logits on
        the margin and T_eff in logits per mask pixel (``scan --reference`` reports them after calibration)."""
        t = self.threshold if threshold is None else threshold
        return {"margin_threshold": t * self.margin_scale, "efficiency_threshold": t * self.efficiency_scale}

    def detect(self, model: torch.nn.Module, clean=None, *, generator: torch.Generator | None = None,
               progress: Progress = None) -> Verdict:
        shape = self._input_shape(model, clean)
        head = getattr(model, "head", None)
        if not isinstance(getattr(head, "weight", None), torch.Tensor) or not hasattr(model, "features"):
            raise ValueError("DFTND.detect needs `model.features` (penultimate neurons) and `model.head` "
                             "(the final Linear layer): every backdoorlab model has both.")
        dev = device_of(model)
        g = new_generator(generator_seed(generator))
        K, N, S = head.weight.shape[0], self.noise_inputs, self.starts
        x = (self.noise_max * torch.rand(S * N, *shape, generator=g)).to(dev)    # start s: rows s*N..(s+1)*N-1
        with eval_mode(model), frozen(model):
            m, d, w, objective = self._maximize_responses(model, x, S, g, progress)   # rows (k, s, n)
            with torch.no_grad():
                X = x.repeat(K, *([1] * (x.dim() - 1)))
                x_hat = (1 - m) * X + m * d
                increase = (model(x_hat).view(K, S, N, K) - model(x).view(1, S, N, K)).mean(2).cpu()  # eq. 7
        objective = objective.view(K, S).cpu()
        mask_l1 = m.flatten(1).sum(1).view(K, S, N).mean(2).cpu()
        r = decide(increase, mask_l1, objective, select=self.select, threshold=self.threshold,
                   margin_scale=self.margin_scale, efficiency_scale=self.efficiency_scale)
        top = int(r.score.argmax())
        p = top * S + int(r.chosen[top])                  # the top label's chosen problem
        rows = slice(p * N, (p + 1) * N)
        w_top = w[p].cpu()
        rows_k = torch.arange(K)
        evidence = DFTNDEvidence(
            logit_increase=r.increase, margin=r.margin, ratio=r.ratio, efficiency=r.efficiency, score=r.score,
            objective=objective[rows_k, r.chosen], start_objectives=objective, chosen_start=r.chosen,
            mask_l1=r.mask_l1, start_increase=increase, start_mask_l1=mask_l1, start_margin=r.start_margin,
            select=self.select,
            trigger=PatchTrigger(mask=m[rows].mean(0).cpu(), pattern=d[rows].mean(0).cpu()),
            neuron_weights=w_top,
            top_neurons=tuple(int(i) for i in torch.argsort(w_top, descending=True)[:5]),
            noise_inputs=N)
        return Verdict(backdoored=bool(r.flagged), score=float(r.score[top]), threshold=float(self.threshold),
                       suspects=tuple(r.flagged), evidence=evidence)

    # ---- steps ---------------------------------------------------------------------------------
    @staticmethod
    def _input_shape(model, clean) -> tuple[int, ...]:
        if clean is not None:
            from ...data import as_tensors
            return tuple(as_tensors(clean)[0].shape[1:])
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError("DFTND.detect needs the model's input shape: give a model with "
                             "`input_shape` (every backdoorlab model has one) or a few images.")
        return tuple(int(s) for s in shape)

    def _maximize_responses(self, model, x, S, g, progress):
        """Eq. 6 by projected sign-gradient ascent, S times per label k, all K x S problems in one batch.

        Problem (k, s) (row block k*S + s) maximises on start s's N noise inputs; it starts w on the neurons
        that raise label k (w ∝ positive part of the head's row k) and keeps w on the simplex restricted to
        them; its N inputs carry per-input (m_i, δ_i), averaged after ``steps`` iterations and refined per
        input for ``refine_steps`` more.  Returns (m, δ, w, objective) with objective of shape (K * S,)."""
        SN, C, H, W = x.shape
        N = SN // S
        Wh = model.head.weight.detach().clamp_min(0)                             # (K, d)
        K = Wh.shape[0]
        support = Wh > 0
        if not bool(support.any(1).all()):
            dead = [int(k) for k in (~support.any(1)).nonzero().flatten()]
            raise ValueError(f"DF-TND needs every label to have a penultimate neuron that raises it "
                             f"(a positive weight in model.head); labels {dead} have none.")
        support = support.repeat_interleave(S, 0)                                # (K * S, d)
        w = (Wh / Wh.sum(1, keepdim=True).clamp_min(1e-12)).repeat_interleave(S, 0)
        P = K * S                                                                # problems, k-major
        X = x.repeat(K, 1, 1, 1)                                  # rows p*N..(p+1)*N-1: problem p = k*S + s
        m = torch.full((P * N, 1, H, W), self.mask_init, device=x.device)
        d = torch.rand(P * N, C, H, W, generator=g).to(x.device)
        total = self.steps + self.refine_steps
        ramp = max(1.0, self.lam_warmup * total)
        done = 0
        for phase, n_steps in ((0, self.steps), (1, self.refine_steps)):
            if phase == 1:   # official: every input restarts from its problem's average (m, δ)
                m = m.view(P, N, 1, H, W).mean(1, keepdim=True).expand(P, N, 1, H, W).reshape(P * N, 1, H, W)
                d = d.view(P, N, C, H, W).mean(1, keepdim=True).expand(P, N, C, H, W).reshape(P * N, C, H, W)
            for _ in range(n_steps):
                lam = self.lam * min(1.0, done / ramp)
                m, d, w = (t.detach().requires_grad_(True) for t in (m, d, w))
                r = model.features((1 - m) * X + m * d).view(P, N, -1)              # (P, N, d)
                objective = ((r * w.unsqueeze(1)).sum(2).mean(1)
                             - lam * m.flatten(1).sum(1).view(P, N).mean(1))        # (P,) eq. 6 per problem
                gm, gd, gw = torch.autograd.grad(objective.sum(), [m, d, w])
                with torch.no_grad():
                    d = (d + self.step_size * gd.sign()).clamp(0, 1)
                    m = m + self.step_size * gm.sign()
                    m = (m.abs() - self.step_size * lam).clamp_min(0).mul(m.sign()).clamp(0, 1)
                    step = gw / gw.abs().amax(1, keepdim=True).clamp_min(1e-12)
                    w = _project_simplex_rows(w + self.step_size * step, support)
                done += 1
                if progress is not None:
                    progress(done, total)
        return m.detach(), d.detach(), w.detach(), objective.detach()


@dataclass(frozen=True)
class Decision:
    """DF-TND's rule applied to every start's measurements (``decide``)."""

    chosen: torch.Tensor        # (K,) the start reported for each label
    start_margin: torch.Tensor  # (K, S) s_k in every start of label k's maximisation
    increase: torch.Tensor      # (K, K) row k: L of eq. 7 under label k's chosen start
    mask_l1: torch.Tensor       # (K,) mask L1 of the chosen starts
    margin: torch.Tensor        # (K,) s_k of the chosen starts
    efficiency: torch.Tensor    # (K,) s_k / max(MASK_FLOOR, mask L1)
    ratio: torch.Tensor         # (K,) ratio_rule's ratios
    score: torch.Tensor         # (K,) ratio_rule's scores
    flagged: list[int]          # the top-scoring label when its score exceeds the threshold, else []


def decide(start_increase: torch.Tensor, start_mask_l1: torch.Tensor, start_objectives: torch.Tensor, *,
           select: str = "margin", threshold: float = THRESHOLD, margin_scale: float = MARGIN_SCALE,
           efficiency_scale: float = EFFICIENCY_SCALE) -> Decision:
    """From every start's eq. 7 increases (K, S, K), mask L1 (K, S) and eq. 6 objective (K, S): per label k the
    margin s_k = L_k - max(0, max_{j != k} L_j) in each start of its own maximisation, the start reported for
    k (``select``: "margin", the largest s_k; "objective", the largest eq. 6 objective), and ``ratio_rule`` on
    the reported margins.  ``detect`` calls it; it also re-reads saved evidence under either ``select``."""
    if select not in SELECT:
        raise ValueError(f"select must be one of {', '.join(map(repr, SELECT))}, got {select!r}")
    inc, l1, obj = (_floating(t) for t in (start_increase, start_mask_l1, start_objectives))
    for what, t in (("logit increases", inc), ("mask L1", l1), ("eq. 6 objectives", obj)):
        if not bool(torch.isfinite(t).all()):   # argmax would pick a NaN start and the NaN would clear every label
            raise ValueError(f"DF-TND: the {what} are not finite (NaN or inf): the model's logits or penultimate "
                             "responses overflow on the noise inputs; check the model (its weights and its "
                             "output on inputs in [0, 1]) before trusting any verdict on it.")
    K, S, _ = inc.shape
    eye = torch.eye(K, dtype=torch.bool).unsqueeze(1).expand(K, S, K)
    own = inc[eye].view(K, S)
    start_margin = own - inc.masked_fill(eye, float("-inf")).amax(2).clamp_min(0)
    chosen = (start_margin if select == "margin" else obj).argmax(1)
    rows = torch.arange(K)
    increase, mask_l1 = inc[rows, chosen], l1[rows, chosen]
    margin = start_margin[rows, chosen]
    efficiency = margin / mask_l1.clamp_min(MASK_FLOOR)
    ratio, score, flagged = ratio_rule(margin, threshold, margin_scale, efficiency=efficiency,
                                       efficiency_scale=efficiency_scale)
    return Decision(chosen=chosen, start_margin=start_margin, increase=increase, mask_l1=mask_l1, margin=margin,
                    efficiency=efficiency, ratio=ratio, score=score, flagged=flagged)


def _floating(values) -> torch.Tensor:
    """A tensor of ``values`` in its own floating dtype (lists and integer tensors become float32)."""
    t = torch.as_tensor(values)
    return t if t.is_floating_point() else t.float()


def _other_max(increase: torch.Tensor) -> torch.Tensor:
    """Row k: the largest increase of a label other than k."""
    K = increase.shape[0]
    return increase.masked_fill(torch.eye(K, dtype=torch.bool), float("-inf")).amax(1)


def ratio_rule(margin: torch.Tensor, threshold: float, margin_scale: float = float("inf"),
               floor: float = MARGIN_FLOOR, *, efficiency: torch.Tensor | None = None,
               efficiency_scale: float = float("inf")) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(per-label ratios, per-label scores, flagged labels).  Ratio: label k's margin over the largest
    other label's margin (margins below ``floor`` logits count as ``floor``); only the top label can
    exceed 1.  Score: max(ratio_k, margin_k / margin_scale, efficiency_k / efficiency_scale) (a term
    whose scale is inf, or an efficiency that is None, is left out), so that score > threshold exactly
    when the ratio exceeds ``threshold``, or the margin exceeds threshold * margin_scale logits, or the
    margin per mask pixel exceeds threshold * efficiency_scale.  The top-scoring label alone is flagged,
    when its score exceeds ``threshold`` (with the efficiency term it need not be the top-margin label)."""
    others = _other_max(margin.unsqueeze(0).expand(len(margin), -1))
    ratio = (margin / others.clamp_min(floor)).to(torch.float64)
    score = ratio
    if not math.isinf(margin_scale):
        score = torch.maximum(score, margin.to(torch.float64) / margin_scale)
    if efficiency is not None and not math.isinf(efficiency_scale):
        score = torch.maximum(score, efficiency.to(torch.float64) / efficiency_scale)
    top = int(score.argmax())
    return ratio, score, ([top] if float(score[top]) > threshold else [])


def _project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of a vector onto {w >= 0, 1^T w = 1} (sort-based, exact)."""
    return _project_simplex_rows(v[None], torch.ones(1, len(v), dtype=torch.bool, device=v.device))[0]


def _project_simplex_rows(v: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Row k projected onto the simplex over the entries where ``support[k]`` (zero elsewhere); the
    sort-based projection of every row at once (off-support entries sort last and are never counted)."""
    u = v.masked_fill(~support, float("-inf")).sort(1, descending=True).values
    css = u.cumsum(1) - 1
    k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    valid = k[None] <= support.sum(1, keepdim=True)
    rho = ((u - css / k > 0) & valid).sum(1, keepdim=True) - 1           # the condition holds on a prefix
    theta = css.gather(1, rho) / (rho + 1)
    return (v - theta).clamp_min(0) * support
