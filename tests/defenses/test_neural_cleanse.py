"""Neural Cleanse detector: planted ground truth (hand-wired backdoor + clean twin), batched ==
one-label-at-a-time, the vectorised λ schedule against a literal transcription of the official
per-label loop, and the MAD outlier rule on hand-computed numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backdoorlab.defenses.detect import DETECTORS, NeuralCleanse
from backdoorlab.models import HandWiredBackdoor
from backdoorlab.triggers import PatchTrigger

# A small budget: 8x8 digits, ~150 steps per label at most.
FAST = dict(epochs=30, batches_per_epoch=5, batch_size=16, patience=2, early_stop_patience=3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def clean_x(digits):
    _, test = digits
    return test.x[:200]


@pytest.fixture(scope="module")
def pixel_handwired(clean_model, digits):
    """Pixel (0, 0) hand-wired to label 3 (mask 1/2, pattern 1), and its clean twin.

    The shared ``handwired`` fixture's neuron has a dead zone: it fires only once the patch is
    almost exactly the pattern, so it gives no gradient until a random mask happens to land there,
    and gradient-based trigger search finds it only by chance (a 1-pixel binary trigger too: its
    threshold is 1/2).  With mask 1/2 the neuron is s = ReLU(x[0,0] / 2), linear in the pixel; the
    planted ground truth stays exact (digits' corner pixel is 0, so clean accuracy is unchanged)."""
    mask, pattern = torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)
    mask[0, 0, 0], pattern[0, 0, 0] = 0.5, 1.0          # s(x) = ReLU(x[0, 0] / 2): no dead zone
    trig = PatchTrigger(mask=mask, pattern=pattern)
    return HandWiredBackdoor(clean_model, trig, target=3).eval(), clean_model, trig, 3


@pytest.fixture(scope="module")
def verdicts(pixel_handwired, clean_x):
    backdoored, twin, _, _ = pixel_handwired
    det = NeuralCleanse(**FAST)
    return det.detect(backdoored, clean_x, generator=gen(0)), det.detect(twin, clean_x, generator=gen(0))


def test_registered():
    assert DETECTORS["neural-cleanse"] is NeuralCleanse


def test_handwired_backdoor_is_found_at_its_location(verdicts, pixel_handwired):
    v, _ = verdicts
    _, _, trig, target = pixel_handwired
    assert v.backdoored and v.suspects == (target,)
    assert v.score > v.threshold == 2.0
    ev = v.evidence
    rec = ev.trigger_for(target)
    inside = float(rec.mask[:, 0, 0].sum())             # the planted pixel (0, 0)
    assert inside / rec.l1() > 0.5
    assert rec.l1() < 0.5 * ev.median                     # much smaller than a natural trigger
    # the 0.99 threshold applies to the epoch-average success on the optimisation batches; the kept
    # (smallest successful) mask is re-measured on all 200 images, where it may miss a few
    assert ev.success_rates[ev.labels.index(target)] >= 0.97
    assert ev.l1_norms[ev.labels.index(target)] == pytest.approx(rec.l1(), rel=1e-5)


def test_clean_twin_is_not_flagged(verdicts):
    _, v = verdicts
    assert not v.backdoored and v.suspects == () and v.score <= 2.0


def test_evidence_is_consistent(verdicts):
    v, _ = verdicts
    ev = v.evidence
    n = torch.tensor(ev.l1_norms, dtype=torch.float64)
    med = float(np.median(n.numpy()))                     # numpy's median, as the official code
    mad = float(np.median((n - med).abs().numpy())) * 1.4826
    assert ev.median == pytest.approx(med) and ev.mad == pytest.approx(mad)
    assert torch.allclose(torch.tensor(ev.anomaly_indices, dtype=torch.float64), (n - med).abs() / mad, rtol=1e-6)
    assert len(ev.triggers) == len(ev.labels) == 10 and all(isinstance(t, PatchTrigger) for t in ev.triggers)
    assert ev.image_passes == sum(ev.steps) * FAST["batch_size"]
    R = NeuralCleanse().restarts                           # steps count every start of a label
    assert all(s % FAST["batches_per_epoch"] == 0 and R <= s <= R * FAST["epochs"] * FAST["batches_per_epoch"]
               for s in ev.steps)
    assert len(ev.start_l1_norms) == 10 and all(len(v) == R for v in ev.start_l1_norms)
    for n, starts in zip(ev.l1_norms, ev.start_l1_norms):  # the kept mask is the smallest successful start
        ok = [v for v in starts if v is not None]
        assert n == pytest.approx(min(ok) if ok else starts[0], rel=1e-5)


def test_batched_equals_one_label_at_a_time(pixel_handwired, clean_x):
    backdoored = pixel_handwired[0]
    kw = dict(FAST, epochs=4, labels=(0, 3, 7))
    a = NeuralCleanse(**kw).reverse_engineer(backdoored, clean_x, (0, 3, 7), generator=gen(3))
    b = NeuralCleanse(**kw, batched=False).reverse_engineer(backdoored, clean_x, (0, 3, 7), generator=gen(3))
    assert a[2] == b[2]
    for ma, mb in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.allclose(ma, mb, atol=1e-4)


def test_restarts_keep_the_smallest_successful_start():
    # 2 labels x 3 starts, row r * L + i; label 0: starts reach the threshold with L1 5 and 3, start 2
    # (L1 1) never does; label 1: no start succeeds -> start 0, as the official single start
    l1 = [5.0, 7.0, 3.0, 6.0, 1.0, 2.0]
    found = [True, False, True, False, False, False]
    masks = [torch.full((1, 1, 1), v) for v in l1]
    pats = [torch.full((1, 1, 1), float(j)) for j in range(6)]
    m, p, steps, starts = NeuralCleanse(restarts=3)._best_start(2, 3, masks, pats, [10, 20, 30, 40, 50, 60], found)
    assert [float(v.sum()) for v in m] == [3.0, 7.0] and [float(v.sum()) for v in p] == [2.0, 1.0]
    assert steps == [90, 120]
    assert starts == [(5.0, 3.0, None), (None, None, None)]


def test_start_zero_is_the_single_start_run(pixel_handwired, clean_x):
    # start 0 of a 2-start run is drawn and optimised exactly as the single-start (official) run
    kw = dict(FAST, epochs=6, labels=(0, 3))
    one = NeuralCleanse(**kw, restarts=1).reverse_engineer(pixel_handwired[0], clean_x, (0, 3), generator=gen(5))
    two = NeuralCleanse(**kw, restarts=2).reverse_engineer(pixel_handwired[0], clean_x, (0, 3), generator=gen(5))
    for i in range(2):
        assert one[3][i][0] is not None                    # found in 6 epochs (λ = 0 at first)
        assert two[3][i][0] == pytest.approx(one[3][i][0], rel=1e-4)
        assert float(two[0][i].sum()) == pytest.approx(min(v for v in two[3][i] if v is not None), rel=1e-5)


def _official_schedule(accs, regs, P, init_cost, mult, es_patience, es_thr=0.99, thr=0.99):
    """Literal per-label transcription of the official visualizer's end-of-epoch logic."""
    cost, set_c, up_c, down_c, up_f, down_f = 0.0, 0, 0, 0, False, False
    reg_best, es_c, es_best, costs, stops = math.inf, 0, math.inf, [], []
    for acc, reg in zip(accs, regs):
        if acc >= thr and reg < reg_best:
            reg_best = reg
        if reg_best < math.inf:
            es_c = es_c + 1 if reg_best >= es_thr * es_best else 0
        es_best = min(reg_best, es_best)
        stops.append(down_f and up_f and es_c >= es_patience)
        if cost == 0 and acc >= thr:
            set_c += 1
            if set_c >= P:
                cost, up_c, down_c, up_f, down_f = init_cost, 0, 0, False, False
        else:
            set_c = 0
        if acc >= thr:
            up_c, down_c = up_c + 1, 0
        else:
            up_c, down_c = 0, down_c + 1
        if up_c >= P:
            up_c, cost, up_f = 0, cost * mult, True
        elif down_c >= P:
            down_c, cost, down_f = 0, cost / mult ** 1.5, True
        costs.append(cost)
    return costs, stops


def test_schedule_matches_official_loop():
    g = gen(11)
    E, L = 60, 4
    accs = (torch.rand(E, L, generator=g) < 0.7).double() * 0.02 + 0.98   # 0.98 or 1.0
    regs = 30 * torch.rand(E, L, generator=g).double().cumsum(0).flip(0) / E
    nc = NeuralCleanse(patience=3, early_stop_patience=4, init_cost=1e-3, cost_multiplier=2.0)
    s = {"cost": torch.zeros(L, dtype=torch.float64), "wm": torch.zeros(L, 1, 2, 2), "wp": torch.zeros(L, 1, 2, 2),
         "m_best": torch.zeros(L, 1, 2, 2), "p_best": torch.zeros(L, 1, 2, 2),
         "reg_best": torch.full((L,), math.inf, dtype=torch.float64),
         "es_best": torch.full((L,), math.inf, dtype=torch.float64), "up": torch.zeros(L, dtype=torch.bool),
         "down": torch.zeros(L, dtype=torch.bool)}
    for k in ("set_cnt", "up_cnt", "down_cnt", "es_cnt"):
        s[k] = torch.zeros(L, dtype=torch.float64)
    got_costs, got_stops = [], []
    for e in range(E):
        got_stops.append(nc._schedule(s, accs[e], regs[e]).tolist())
        got_costs.append(s["cost"].tolist())
    for j in range(L):
        costs, stops = _official_schedule(accs[:, j].tolist(), regs[:, j].tolist(), 3, 1e-3, 2.0, 4)
        assert [c[j] for c in got_costs] == pytest.approx(costs)
        assert [st[j] for st in got_stops] == stops
    assert any(any(st) for st in got_stops)   # the sequence exercises early stopping


def test_mad_rule_hand_computed():
    # norms 10, 11, 9, 10, 2 -> median 10, MAD 1*1.4826: label 4 has index 8/1.4826 = 5.40 and is
    # below the median -> flagged; label 1 (index 0.67) is not.
    masks = [torch.full((1, 1, 1), v) for v in (10.0, 11.0, 9.0, 10.0, 2.0)]
    trig = [PatchTrigger(mask=torch.zeros(1, 2, 2), pattern=torch.zeros(1, 2, 2))] * 5
    v = NeuralCleanse()._outliers((0, 1, 2, 3, 4), masks, tuple(trig), [1.0] * 5, [10] * 5)
    assert v.backdoored and v.suspects == (4,)
    assert v.score == pytest.approx(8 / 1.4826)
    assert v.evidence.anomaly_indices[1] == pytest.approx(1 / 1.4826)
    # a large outlier (above the median) is not a backdoor
    masks[4] = torch.full((1, 1, 1), 30.0)
    assert not NeuralCleanse()._outliers((0, 1, 2, 3, 4), masks, tuple(trig), [1.0] * 5, [10] * 5).backdoored


@pytest.mark.parametrize("field,value", [("epochs", 0), ("lr", -1.0), ("success_threshold", 1.5),
                                          ("cost_multiplier", 1.0), ("batch_size", 2.5), ("labels", (-1,)),
                                          ("restarts", 0)])
def test_invalid_fields_name_themselves(field, value):
    with pytest.raises(ValueError, match=f"NeuralCleanse.{field}"):
        NeuralCleanse(**{field: value})


def test_bad_inputs(pixel_handwired, clean_x):
    with pytest.raises(ValueError, match="must lie in"):
        NeuralCleanse(**FAST).detect(pixel_handwired[0], clean_x * 3)
    with pytest.raises(ValueError, match="labels must be <"):
        NeuralCleanse(**FAST, labels=(12,)).detect(pixel_handwired[0], clean_x)
