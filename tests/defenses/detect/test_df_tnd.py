"""DF-TND: the simplex projections against hand-computed points and the official bisection, the
ratio rule on hand-made margins, a planted neuron that responds far more than any clean one
(its label's maximisation finds the pixel; its margin is several times any other label's), no data
needed; and (slow) MNIST BadNets models and a clean one."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from backdoorlab.defenses.detect import DETECTORS, DFTND
from backdoorlab.defenses.detect.df_tnd import (EFFICIENCY_SCALE, MARGIN_SCALE, MASK_FLOOR, THRESHOLD,
                                                _project_simplex, _project_simplex_rows, decide, ratio_rule)

sys.path.insert(0, str(Path(__file__).parent))
from _planted import PIXEL, planted  # noqa: E402

FAST = dict(steps=60, refine_steps=30)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registered_and_data_free():
    assert DETECTORS["df-tnd"] is DFTND and DFTND.data_free


def _bisection(a: torch.Tensor) -> torch.Tensor:
    """The official code's projection: find mu with sum(max(0, a - mu)) = 1 by bisection."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mu = (lo + hi) / 2
        s = float((a - mu).clamp_min(0).sum())
        lo, hi = (mu, hi) if s > 1 else (lo, mu)
    return (a - (lo + hi) / 2).clamp_min(0)


def test_simplex_projection():
    # hand-computed: sorted u = (0.6, 0.5, -1), cumsum - 1 = (-0.4, 0.1, -0.9), rho = 2 -> theta = 0.05
    assert torch.allclose(_project_simplex(torch.tensor([0.6, 0.5, -1.0])), torch.tensor([0.55, 0.45, 0.0]))
    assert torch.allclose(_project_simplex(torch.tensor([0.5, 0.5, 0.5])), torch.full((3,), 1 / 3))
    assert torch.equal(_project_simplex(torch.tensor([2.0, 0.0, 0.0])), torch.tensor([1.0, 0.0, 0.0]))
    v = torch.randn(50, generator=gen(3))
    p = _project_simplex(v)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-6) and float(p.min()) >= 0
    assert torch.allclose(p, _bisection(v), atol=1e-5)


def test_simplex_projection_on_a_support():
    v = torch.tensor([[0.6, 0.5, -1.0, 3.0], [0.2, 0.2, 0.2, 0.2]])
    support = torch.tensor([[True, True, True, False], [False, True, True, True]])
    out = _project_simplex_rows(v, support)
    assert torch.allclose(out[0], torch.tensor([0.55, 0.45, 0.0, 0.0]))     # entry 3 is off the support
    assert torch.allclose(out[1], torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3]))


def test_ratio_rule_hand_computed():
    # one label far above the rest: 30 / 8 = 3.75 > 3.5
    s = torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 30])
    r, score, flagged = ratio_rule(s, 3.5)
    assert float(r[9]) == pytest.approx(30 / 8) and flagged == [9]
    assert float(r[8]) == pytest.approx(8 / 30) and float(r[0]) == 0.0
    assert torch.equal(score, r)                       # no margin threshold: the score is the ratio
    assert ratio_rule(s, 3.8)[2] == []
    # a clean-looking spread (strokes raise several labels): the top is 9 / 7
    s = torch.tensor([-7.0, -5, 9, 6, 7, 7, 1, 5, 0, -8])
    r, _, flagged = ratio_rule(s, 3.5)
    assert flagged == [] and float(r.max()) == pytest.approx(9 / 7)
    # runner-up below the 1-logit floor counts as 1: 4 / 1; a tiny lone margin is not a trojan
    assert ratio_rule(torch.tensor([4.0, 0.3, -2.0]), 3.5)[2] == [0]
    r, _, flagged = ratio_rule(torch.tensor([0.5, 0.01, -2.0]), 3.5)
    assert flagged == [] and float(r[0]) == pytest.approx(0.5)
    assert float(ratio_rule(torch.tensor([-1.0, -3.0]), 3.5)[0][0]) == pytest.approx(-1.0)


def test_margin_scale_flags_a_large_margin_beside_an_attractor():
    """A 29.8-logit target margin next to a 9.1-logit attractor: ratio 3.27 < 3.5, but the margin is above
    T_abs = T * margin_scale = 27; score = max(ratio, margin / margin_scale) = 29.8 / (27 / 3.5)."""
    s = torch.tensor([-8.6, -1.9, 9.1, 0.4, 3.3, 8.0, 29.8, 0.8, -5.4, -7.9])
    r, score, flagged = ratio_rule(s, 3.5)
    assert flagged == [] and float(r[6]) == pytest.approx(29.8 / 9.1) and torch.equal(score, r)
    r, score, flagged = ratio_rule(s, 3.5, MARGIN_SCALE)
    assert MARGIN_SCALE == pytest.approx(27.0 / 3.5)
    assert flagged == [6] and float(score[6]) == pytest.approx(29.8 / MARGIN_SCALE)
    assert float(score[2]) == pytest.approx(max(9.1 / 29.8, 9.1 / MARGIN_SCALE))
    assert ratio_rule(s, 3.5, 30.0 / 3.5)[2] == []        # 29.8 < T_abs = 30: neither criterion holds
    # a new T moves T_abs with it and leaves every score as it was
    for t in (2.0, 5.0):
        _, score2, flagged2 = ratio_rule(s, t, MARGIN_SCALE)
        assert torch.equal(score2, score) and flagged2 == ([6] if float(score[6]) > t else [])


def test_efficiency_flags_a_small_mask_margin_beside_an_attractor():
    """A single-pixel trojan: 8.9 logits with a mask of L1 0.93 next to a 3.7-logit stroke attractor (L1 9):
    ratio 2.41 < 3.5 and 8.9 < 27 logits, but 8.9 / max(1, 0.93) = 8.9 logits per mask pixel > T_eff = 1."""
    s = torch.tensor([8.9, -1.0, -0.2, 0.7, -0.4, 3.7, -3.4, -0.4, -4.7, 1.0])
    l1 = torch.tensor([0.93, 4.0, 2.0, 7.0, 6.0, 9.0, 11.0, 1.0, 13.0, 9.0])
    eff = s / l1.clamp_min(MASK_FLOOR)
    assert ratio_rule(s, 3.5, MARGIN_SCALE)[2] == []
    r, score, flagged = ratio_rule(s, 3.5, MARGIN_SCALE, efficiency=eff, efficiency_scale=EFFICIENCY_SCALE)
    assert EFFICIENCY_SCALE == pytest.approx(1.0 / 3.5) and flagged == [0]
    assert float(score[0]) == pytest.approx(8.9 / EFFICIENCY_SCALE) and float(r[0]) == pytest.approx(8.9 / 3.7)
    # the same margins drawn with stroke-sized masks stay below T_eff: 8.9 / 12 < 1 logit per pixel
    eff = s / torch.full_like(l1, 12.0)
    assert ratio_rule(s, 3.5, MARGIN_SCALE, efficiency=eff, efficiency_scale=EFFICIENCY_SCALE)[2] == []
    # the top-efficiency label is flagged even when another label has the larger margin (ratio < 1 for it)
    s2, l2 = torch.tensor([3.0, 6.0, 0.0]), torch.tensor([1.0, 30.0, 5.0])
    _, score, flagged = ratio_rule(s2, 3.5, MARGIN_SCALE, efficiency=s2 / l2, efficiency_scale=EFFICIENCY_SCALE)
    assert flagged == [0] and float(score[0]) == pytest.approx(3.0 * 3.5)


def test_implied_thresholds_move_with_t():
    """T_abs = T * margin_scale and T_eff = T * efficiency_scale, the scales fixed at T = 3.5 (27 logits, 1 logit
    per pixel): at the preset T = 2.5, 27 * 2.5 / 3.5 = 19.286 and 2.5 / 3.5 = 0.7143; at a calibrated
    T = 2.5561, 19.72 and 0.7303."""
    assert DFTND().threshold == 2.5
    assert DFTND().implied_thresholds() == pytest.approx({"margin_threshold": 19.2857, "efficiency_threshold": 0.71429},
                                                         rel=1e-4)
    assert DFTND().implied_thresholds(3.5) == pytest.approx({"margin_threshold": 27.0, "efficiency_threshold": 1.0})
    x = DFTND().implied_thresholds(2.5561)
    assert x == pytest.approx({"margin_threshold": 19.7184, "efficiency_threshold": 0.73031}, rel=1e-4)
    assert DFTND(threshold=2.5561).implied_thresholds() == x


def test_threshold_set_to_a_margin_decided_score_flags_nothing():
    """Scores do not depend on T, so T set to a model's own score (``calibrate``) never flags it, also when
    the margin term decides the score (9 / 8.55 = 1.05 < 9 / margin_scale = 1.17)."""
    s = torch.tensor([9.0, 8.55, 0.5, 0.2])
    _, score, _ = ratio_rule(s, 3.5, MARGIN_SCALE)
    t = float(score.max())
    assert t == pytest.approx(9.0 / MARGIN_SCALE) and ratio_rule(s, t, MARGIN_SCALE)[2] == []
    assert ratio_rule(s, t - 1e-9, MARGIN_SCALE)[2] == [0]


@pytest.fixture(scope="module")
def verdicts(clean_model):
    det = DFTND(**FAST)
    # the planted neuron r = 20 * x_p responds far above the clean features; its label gains 100 * x_p
    model = planted(clean_model, target=3, gain=20.0)
    return det.detect(model, None, generator=gen(0)), det.detect(clean_model, None, generator=gen(0)), model


def test_planted_neuron_label_is_the_outlier(verdicts):
    v, _, model = verdicts
    ev = v.evidence
    D = model.head.in_features - 1                      # index of the planted neuron
    assert ev.top_neurons[0] == D and float(ev.neuron_weights[D]) > 0.5
    # label 3's maximisation sets pixel p to 1 with mask 1 on every noise input
    assert float(ev.trigger.mask[0, PIXEL[0], PIXEL[1]]) == 1.0
    assert float(ev.trigger.pattern[0, PIXEL[0], PIXEL[1]]) == 1.0
    assert v.suspects == (3,) and v.backdoored and v.score == pytest.approx(float(ev.score[3]))
    assert float(ev.score[3]) == pytest.approx(max(float(ev.ratio[3]), float(ev.margin[3]) / MARGIN_SCALE,
                                                   float(ev.efficiency[3]) / EFFICIENCY_SCALE))
    assert torch.allclose(ev.efficiency, ev.margin / ev.mask_l1.clamp_min(MASK_FLOOR))
    assert v.score > v.threshold == THRESHOLD
    # L_3 in label 3's row: the planted weight 2 * 50 / 20 = 5 per unit response, 20 * 1 response
    # at x_p = 1 vs x_p in [0, 0.1] before: at least 100 * 0.9 = 90 logits, far above every other label
    assert float(ev.logit_increase[3, 3]) > 90 and int(ev.margin.argmax()) == 3
    assert ev.noise_inputs == 10 and ev.logit_increase.shape == (10, 10)


def test_each_label_reports_its_largest_margin_start(verdicts, clean_model):
    """Three starts per label by default; label k's reported row is the start with the largest margin s_k
    (read in that start's own row of increases), and a single start reports start 0 everywhere."""
    for verdict in verdicts[:2]:
        ev = verdict.evidence
        assert ev.start_objectives.shape == (10, DFTND().starts) and DFTND().starts == 3
        assert ev.select == DFTND().select == "margin"
        assert ev.start_increase.shape == (10, 3, 10) and ev.start_mask_l1.shape == (10, 3)
        for k in range(10):
            for s in range(3):
                row = ev.start_increase[k, s]
                others = torch.cat([row[:k], row[k + 1:]]).max().clamp_min(0)
                assert float(ev.start_margin[k, s]) == pytest.approx(float(row[k] - others), abs=1e-5)
        assert torch.equal(ev.chosen_start, ev.start_margin.argmax(1))
        assert torch.equal(ev.margin, ev.start_margin.amax(1))
        assert torch.equal(ev.logit_increase, ev.start_increase[torch.arange(10), ev.chosen_start])
        assert torch.equal(ev.objective, ev.start_objectives[torch.arange(10), ev.chosen_start])
        j = ev.to_json()
        assert j["chosen_start"] == ev.chosen_start.tolist() and len(j["start_objectives"][0]) == 3
        assert j["select"] == "margin" and torch.equal(torch.tensor(j["start_increase"]), ev.start_increase)
    one = DFTND(**FAST, starts=1).detect(clean_model, None, generator=gen(1)).evidence
    assert one.start_objectives.shape == (10, 1) and not bool(one.chosen_start.any())


def test_select_objective_is_the_sixth_session_rule(clean_model):
    """select="objective" runs the same maximisation (same seed: the same increases in every start) and reports
    the start with the largest eq. 6 objective; ``decide`` on the saved evidence gives either verdict."""
    by_margin = DFTND(**FAST).detect(clean_model, None, generator=gen(3))
    by_objective = DFTND(**FAST, select="objective").detect(clean_model, None, generator=gen(3))
    a, b = by_margin.evidence, by_objective.evidence
    assert torch.equal(a.start_increase, b.start_increase) and torch.equal(a.start_objectives, b.start_objectives)
    assert torch.equal(b.chosen_start, b.start_objectives.argmax(1)) and b.select == "objective"
    assert not torch.equal(a.chosen_start, b.chosen_start)          # the two rules pick different starts here
    for ev, verdict in ((a, by_margin), (b, by_objective)):
        r = decide(ev.start_increase, ev.start_mask_l1, ev.start_objectives, select=ev.select)
        assert torch.equal(r.chosen, ev.chosen_start) and torch.equal(r.score, ev.score)
        assert tuple(r.flagged) == verdict.suspects


def test_decide_on_hand_made_starts():
    """Two labels x two starts: label 0's start 1 has the larger eq. 6 objective but the smaller margin."""
    inc = torch.tensor([[[6.0, 1.0], [9.0, 8.0]],     # label 0: start 0 margin 5, start 1 margin 1
                        [[-1.0, 2.0], [0.5, 3.0]]])   # label 1: start 0 margin 2, start 1 margin 2.5
    l1 = torch.tensor([[4.0, 0.5], [2.0, 10.0]])
    obj = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    m = decide(inc, l1, obj, threshold=1.5, margin_scale=float("inf"), efficiency_scale=float("inf"))
    assert m.chosen.tolist() == [0, 1] and m.margin.tolist() == [5.0, 2.5]
    assert m.start_margin.tolist() == [[5.0, 1.0], [2.0, 2.5]] and m.mask_l1.tolist() == [4.0, 10.0]
    assert m.ratio.tolist() == [2.0, 0.5] and m.flagged == [0]
    o = decide(inc, l1, obj, select="objective", threshold=1.5, margin_scale=float("inf"),
               efficiency_scale=float("inf"))
    assert o.chosen.tolist() == [1, 0] and o.margin.tolist() == [1.0, 2.0]
    assert o.efficiency.tolist() == [1.0, 1.0] and o.ratio.tolist() == [0.5, 2.0] and o.flagged == [1]
    with pytest.raises(ValueError, match="select must be one of"):
        decide(inc, l1, obj, select="best")


def test_decide_refuses_non_finite_measurements():
    """A NaN start would win argmax and its NaN would clear every label: refused with a clear error instead."""
    inc = torch.zeros(3, 2, 3)
    inc[0, 0, 0] = 100.0
    l1, obj = torch.ones(3, 2), torch.ones(3, 2)
    assert decide(inc, l1, obj).flagged == [0]
    bad = inc.clone()
    bad[1, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="logit increases are not finite"):
        decide(bad, l1, obj)
    with pytest.raises(ValueError, match="objectives are not finite"):
        decide(inc, l1, torch.tensor([[1.0, float("inf")], [1.0, 1.0], [1.0, 1.0]]))
    d64 = decide(inc.double(), l1.double(), obj.double())
    assert d64.increase.dtype == torch.float64 and decide(inc.tolist(), l1.tolist(), obj.tolist()).flagged == [0]


def test_reported_rows_are_rebuilt_from_the_chosen_problem(clean_model, monkeypatch):
    """Index check of the batched multi-start layout: capture the maximisation's (m, δ, w, objective) and rebuild
    every start's row by hand from problem p = k * S + s, whose inputs are start s's noise rows x[s*N:(s+1)*N]
    - a swapped view (k, s) or a wrong row block fails here; the reported row is the chosen start's."""
    cap = {}
    original = DFTND._maximize_responses

    def capture(self, model, x, S, g, progress):
        out = original(self, model, x, S, g, progress)
        cap.update(x=x, S=S, out=out)
        return out

    monkeypatch.setattr(DFTND, "_maximize_responses", capture)
    det = DFTND(steps=20, refine_steps=10, starts=3)
    ev = det.detect(clean_model, None, generator=gen(3)).evidence
    x, S, (m, d, w, objective) = cap["x"], cap["S"], cap["out"]
    top = int(ev.score.argmax())     # seed 3: the top label's reported start is neither 0 nor the objective's
    assert int(ev.chosen_start[top]) not in (0, int(ev.start_objectives[top].argmax()))
    N, K = det.noise_inputs, 10
    assert torch.equal(ev.start_objectives, objective.view(K, S))
    assert S == 3 and x.shape[0] == S * N and bool((ev.chosen_start != ev.chosen_start[0]).any())
    with torch.no_grad():
        for k in range(K):
            for s in range(S):
                p = slice((k * S + s) * N, (k * S + s + 1) * N)
                xs = x[s * N:(s + 1) * N]
                increase = (clean_model((1 - m[p]) * xs + m[p] * d[p]) - clean_model(xs)).mean(0)
                assert torch.allclose(increase, ev.start_increase[k, s], atol=1e-5)
                l1 = float(m[p].flatten(1).sum(1).mean())
                assert l1 == pytest.approx(float(ev.start_mask_l1[k, s]), abs=1e-5)
                if s == int(ev.chosen_start[k]):
                    assert torch.allclose(increase, ev.logit_increase[k], atol=1e-5)
                    assert l1 == pytest.approx(float(ev.mask_l1[k]), abs=1e-5)
    q = top * S + int(ev.chosen_start[top])
    assert torch.equal(ev.neuron_weights, w[q])
    assert torch.equal(ev.trigger.mask, m[q * N:(q + 1) * N].mean(0))


def test_neuron_weights_stay_on_the_labels_positive_neurons(verdicts):
    v, _, model = verdicts
    w = v.evidence.neuron_weights
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-5) and float(w.min()) >= 0
    off = model.head.weight[v.suspects[0]] <= 0                   # neurons that do not raise label 3
    assert off.any() and float(w[off].abs().max()) == 0.0


def test_clean_twin_is_not_flagged(verdicts):
    v, twin, _ = verdicts
    assert not twin.backdoored and twin.score < v.threshold
    assert float(twin.evidence.logit_increase[3, 3]) < float(v.evidence.logit_increase[3, 3]) / 2


def test_verdict_follows_the_ratio_rule(verdicts):
    v, twin, model = verdicts
    for verdict in (v, twin):
        ev = verdict.evidence
        L = ev.logit_increase
        others = L.masked_fill(torch.eye(10, dtype=torch.bool), float("-inf")).amax(1).clamp_min(0)
        assert torch.allclose(ev.margin, L.diagonal() - others)
        r, score, flagged = ratio_rule(ev.margin, verdict.threshold, DFTND().margin_scale,
                                       efficiency=ev.efficiency, efficiency_scale=DFTND().efficiency_scale)
        assert torch.equal(ev.ratio, r) and torch.equal(ev.score, score) and list(verdict.suspects) == flagged
        assert verdict.score == pytest.approx(float(score.max()))
        assert ev.anomaly_indices == tuple(float(x) for x in score)
    # same seed, threshold just above the planted ratio: same increases, nothing flagged
    above = DFTND(**FAST, threshold=v.score + 0.01).detect(model, None, generator=gen(0))
    assert torch.equal(above.evidence.logit_increase, v.evidence.logit_increase) and not above.backdoored


def test_input_shape_needed(clean_model):
    class Bare(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)
    with pytest.raises(ValueError, match="input shape"):
        DFTND(steps=1).detect(Bare(), None)


@pytest.mark.parametrize("field,value", [("noise_inputs", 0), ("step_size", 0.0), ("threshold", -1.0),
                                         ("lam", -0.1), ("mask_init", 1.5), ("noise_max", 0.0),
                                         ("noise_max", 1.5), ("lam_warmup", 2.0), ("efficiency_scale", 0.0),
                                         ("starts", 0), ("starts", 1.5), ("select", "best")])
def test_invalid_fields_name_themselves(field, value):
    with pytest.raises(ValueError, match=rf"DFTND\.{field} must"):
        DFTND(**{field: value})


@pytest.mark.slow
def test_mnist_badnets_found_without_data():
    """Population a of benchmarks/population.py, where the sixth session's start choice (largest eq. 6
    objective) flagged 3 clean models: with each label reported by its largest-margin start, clean-s0 (3.60
    under the old choice, read here from the same run) is cleared, and the weakest square is still found."""
    from backdoorlab.io import load_ground_truth, load_model, truth_path

    cache = Path(__file__).resolve().parents[3] / "runs" / "population"
    bd, cl = cache / "patch5-bl-t3.safetensors", cache / "clean-s0.safetensors"
    if not (bd.exists() and cl.exists()):
        pytest.skip("run benchmarks/population.py first (trains the detection population)")
    goal = load_ground_truth(truth_path(bd))[0]
    v = DFTND().detect(load_model(bd)[0], None, generator=gen(0))
    assert v.backdoored and v.suspects[0] == goal.target
    clean = DFTND().detect(load_model(cl)[0], None, generator=gen(0))
    ev = clean.evidence
    old = decide(ev.start_increase, ev.start_mask_l1, ev.start_objectives, select="objective")
    assert not clean.backdoored and clean.score < 2.0
    assert old.flagged == [3] and float(old.score.max()) == pytest.approx(3.60, abs=0.01)
