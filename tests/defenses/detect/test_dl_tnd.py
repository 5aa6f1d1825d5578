"""DL-TND: the hinge losses against a literal transcription, the quantile rule on hand-computed
cosines, the official revisit pass on hand-built rounds, the proximal solver (the first bisection
round keeps m = 0), the selected constants against a transcription of the official bisection, a
planted one-pixel backdoor (its target's universal and per-image perturbations agree), input
checks; and (slow) the MNIST BadNets model and a clean one."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from backdoorlab.data import clean_subset
from backdoorlab.defenses.detect import DETECTORS, DLTND
from backdoorlab.defenses.detect.dl_tnd import _margin, _proximal_round

sys.path.insert(0, str(Path(__file__).parent))
from _planted import PIXEL, planted  # noqa: E402


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registered():
    assert DETECTORS["dl-tnd"] is DLTND


def test_margin_matches_literal_transcription():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, -1.0]])
    label = torch.tensor([0, 2])
    # f_y - max_{j != y} f_j: 3 - 2.5 = 0.5 ; -1 - 4 = -5
    assert _margin(logits, label).tolist() == [0.5, -5.0]
    g = torch.Generator().manual_seed(0)
    z, lab = torch.randn(4, 5, 7, generator=g), torch.randint(0, 7, (4, 5), generator=g)
    slow = torch.tensor([[float(z[i, j, lab[i, j]] - max(z[i, j, c] for c in range(7) if c != lab[i, j]))
                          for j in range(5)] for i in range(4)])
    assert torch.allclose(_margin(z, lab), slow)


def test_quantile_rule_hand_computed():
    det = DLTND(quantile=0.25)
    cos = torch.tensor([0.2, 0.9, 0.95, 0.8, 0.99])
    # sorted 0.2 0.8 0.9 0.95 0.99; position 0.25 * 4 = 1 -> 0.8 (linear interpolation)
    assert float(det._quantile(cos)) == pytest.approx(0.8)
    assert float(DLTND(quantile=0.5)._quantile(cos)) == pytest.approx(0.9)


def test_revisit_pass_hand_built_rounds():
    """Official notebook: the best round's 0.25-quantile, unless a round with area < 1.1 x the smallest
    best area over all labels has a 0.25-quantile above the best round's median."""
    det = DLTND()
    t = torch.tensor
    rounds = [
        # label 0: best round (area 4) cosines median 0.5; a round of area 0 whose q25 is 0.9 replaces it
        [(0.0, t([0.9, 0.9, 0.9, 0.9, 0.9])), (4.0, t([0.1, 0.2, 0.5, 0.6, 0.7]))],
        # label 1: best round (area 10); a round of area 20 (not < 1.1 x 4) with q25 0.95 is ignored
        [(0.0, t([0.0, 0.0, 0.0, 0.0, 0.0])), (20.0, t([0.95] * 5)), (10.0, t([0.3, 0.4, 0.5, 0.6, 0.9]))],
        # label 2: no successful round: round 0 is scored
        [(0.0, t([0.2, 0.4, 0.6, 0.8, 1.0]))],
    ]
    sim, index = det._scores(rounds, [1, 2, None], reach=False)
    assert sim.tolist() == pytest.approx([0.9, 0.4, 0.4])
    assert index == [0, 2, 0]          # label 0: the revisited round 0; label 1: its best round; label 2: round 0


def test_evidence_is_the_scoring_rounds(clean_model, digits, monkeypatch):
    """When the revisit pass scores a label from another round than its smallest-area success, every
    evidence field (cosines, trigger, area, c, universal success) is that round's."""
    from backdoorlab.defenses.detect.dl_tnd import _Round

    train, _ = digits
    t, z = torch.tensor, torch.zeros

    def rnd(area, cos, c, hit, ok, fill):
        return _Round(area, t(cos), torch.full((1, 8, 8), fill), z(1, 8, 8), c, hit, ok, torch.ones(len(cos), dtype=torch.bool))

    rounds = [
        # label 0: best = round 1 (area 4), but round 0 (area 0, q25 0.9 > median 0.5) is revisited
        [rnd(0.0, [0.9] * 5, 0.01, 0.0, False, 0.0), rnd(4.0, [0.1, 0.2, 0.5, 0.6, 0.7], 3.0, 1.0, True, 0.25)],
        # label 1: its best round (area 10) stands
        [rnd(0.0, [0.0] * 5, 0.01, 0.0, False, 0.0), rnd(10.0, [0.3, 0.4, 0.5, 0.6, 0.9], 1.5, 0.8, True, 0.5)],
    ] + [[rnd(0.0, [0.0] * 5, 0.01, 0.0, False, 0.0)] for _ in range(8)]   # labels 2-9: nothing succeeded
    best = [1, 1] + [None] * 8

    def fake(self, model, x, y, labels, step_cb):
        return {"rounds": [rounds[int(k)] for k in labels], "best": [best[int(k)] for k in labels],
                "p_succ": torch.ones(len(labels))}

    monkeypatch.setattr(DLTND, "_solve_labels", fake)
    ev = DLTND(steps=1, search_steps=1).detect(clean_model, train, generator=gen(0)).evidence
    assert float(ev.similarity[0]) == pytest.approx(0.9) and torch.equal(ev.cosines[0], rounds[0][0].cos)
    assert float(ev.mask_l1[0]) == 0.0 and math.isnan(float(ev.const[0])) and float(ev.universal_success[0]) == 0.0
    assert float(ev.triggers[0].mask.max()) == 0.0
    assert float(ev.mask_l1[1]) == 10.0 and float(ev.const[1]) == 1.5 and float(ev.universal_success[1]) == pytest.approx(0.8)
    assert float(ev.triggers[1].mask.max()) == 0.5 and torch.equal(ev.cosines[1], rounds[1][1].cos)
    assert float(ev.mask_l1[5]) == float("inf") and math.isnan(float(ev.const[5]))


def test_first_bisection_round_keeps_mask_zero_and_prox_shrinks(clean_model, digits):
    """c = 0.01 with step 0.01: the proximal threshold (1) wipes every Adam step; a larger c lets the
    mask grow; the mask stays in [0, 1] and the pattern in [0, 1]."""
    train, _ = digits
    x, y = train.x[:6], train.y[:6]
    model = planted(clean_model, target=3)
    for p in model.parameters():
        p.requires_grad_(False)
    tgt = torch.full((1, 6), 3)

    def loss(lg):
        return (-_margin(lg, tgt)).clamp_min(-15.0).sum()

    zero = _proximal_round(model, x[None], (1, 1), 0.01, torch.tensor([[0.01]]), 20, loss, None, lambda i: None)
    assert float(zero["m"].abs().sum()) == 0.0
    grow = _proximal_round(model, x[None], (1, 1), 0.01, torch.tensor([[6.0]]), 200, loss,
                           lambda lg: (lg.argmax(-1) == 3).all(-1), lambda i: None)
    m, d = grow["m"], grow["d"]
    assert float(m.sum()) > 0 and float(m.min()) >= 0 and float(m.max()) <= 1
    assert float(d.min()) >= 0 and float(d.max()) <= 1
    assert grow["success"].tolist() == [True]                # c = 6 reaches the planted target


def official_consts(init=0.01, upper=6.0, steps=8):
    """Every c = 1/λ at which the paper's bisection can record a success, over all 2^steps
    success/failure patterns: c starts at ``init``; after a failed round the failed c becomes the
    lower bound and c moves halfway up to the upper bound; after a success the successful c becomes
    the upper bound and c moves halfway down to the lower bound (written from the description of
    the search, as an independent oracle for the library's loop)."""
    out = set()
    for pattern in range(2 ** steps):
        c, lo, hi = init, 0.0, upper
        for k in range(steps):
            if (pattern >> k) & 1:
                out.add(round(c, 6))
                hi, c = c, (c + lo) / 2
            else:
                lo, c = c, (c + hi) / 2
    return out


@pytest.fixture(scope="module")
def planted_verdicts(clean_model, digits):
    train, _ = digits
    det = DLTND(steps=40, search_steps=5)
    model = planted(clean_model, target=3)
    return det.detect(model, train, generator=gen(1)), det.detect(clean_model, train, generator=gen(1))


def test_planted_target_has_agreeing_perturbations(planted_verdicts):
    v, twin = planted_verdicts
    ev = v.evidence
    assert ev.samples == 10 and len(ev.similarity) == 10
    # the one-pixel trigger sends every other-class image to 3, universally and per image
    assert float(ev.universal_success[3]) == 1.0 and float(ev.per_image_success[3]) == 1.0
    assert float(ev.similarity[3]) > 0.9 and 3 in v.suspects and v.backdoored
    assert int(ev.similarity.argmax()) == 3
    assert float(ev.similarity[3]) > float(twin.evidence.similarity[3])
    # the universal mask weighs the planted pixel among its largest (it needs only a fraction of the
    # pixel: the planted neuron is linear with a large gain); some bisection round succeeded
    m = ev.triggers[3].mask[0]
    assert float(m[PIXEL]) >= 0.5 * float(m.max()) > 0
    assert math.isfinite(float(ev.mask_l1[3])) and not math.isnan(float(ev.const[3]))
    assert v.score == pytest.approx(float(ev.similarity.max())) and v.threshold == 0.75


def test_selected_constants_follow_the_official_bisection(planted_verdicts):
    reachable = official_consts()
    for v in planted_verdicts:
        ev = v.evidence
        for k, (c, area) in enumerate(zip(ev.const.tolist(), ev.mask_l1.tolist())):
            if math.isnan(c):   # not a successful round: none succeeded (infinite area) or the revisit chose round 0
                assert area == float("inf") or area == 0.0
            else:
                assert round(c, 6) in reachable and c != 0.01     # round 0 (m = 0) never succeeds here
            if math.isfinite(area):   # the evidence is one round's: its trigger's mask has its area
                assert float(ev.triggers[k].mask.sum()) == pytest.approx(area, rel=1e-5, abs=1e-6)


def test_needs_data_and_two_classes(clean_model, digits):
    train, _ = digits
    with pytest.raises(ValueError, match="DF-TND"):
        DLTND(steps=2).detect(clean_model, None)
    one = train.subset(torch.nonzero(train.y == 4).flatten()[:5])
    with pytest.raises(ValueError, match="at least 2 classes"):
        DLTND(steps=2).detect(clean_model, one)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        DLTND(steps=2).detect(clean_model, (train.x[:20] * 3, train.y[:20]))


@pytest.mark.parametrize("field,value", [("quantile", 1.5), ("threshold", 2.0), ("steps", 0), ("search_steps", 0),
                                         ("success", 1.5), ("per_image_const", 0.0), ("tau", -1.0),
                                         ("max_const", 0.001), ("samples_per_class", 0)])
def test_invalid_fields_name_themselves(field, value):
    with pytest.raises(ValueError, match=rf"DLTND\.{field} must"):
        DLTND(**{field: value})


@pytest.mark.slow
def test_mnist_badnets_found_with_one_image_per_class(shared_data):
    from backdoorlab.io import load_ground_truth, load_model, truth_path

    # the inputs of benchmarks/detectors.py (= scan --clean-per-class 1 --seed 0): one generator draws
    # the images and then seeds the detector.  Members of population e, the blind test of the reach
    # rule (chosen with populations a-d in view).  clean-s8 is a clean member the official plain-cosine
    # rule flags (s = 0.831 at label 2, its universal perturbation sending 6 of 9 images there) and the
    # reach rule clears (3 misses -> -1), see benchmarks/results/detectors_e.md.
    cache = Path(__file__).resolve().parents[3] / "runs" / "population-e"
    bd, cl = cache / "patch3-br-t5.safetensors", cache / "clean-s8.safetensors"
    if not (bd.exists() and cl.exists()):
        pytest.skip("run benchmarks/population.py --population e first (trains that detection population)")
    from backdoorlab.data import load_dataset

    train = load_dataset("mnist", "train", shared_data)
    goal = load_ground_truth(truth_path(bd))[0]
    verdicts = []
    for path in (bd, cl):
        g = gen(0)
        clean = clean_subset(train, per_class=1, generator=g)
        verdicts.append(DLTND().detect(load_model(path)[0], clean, generator=g))
    v, c = verdicts
    assert v.backdoored and v.suspects[0] == goal.target
    assert float(v.evidence.universal_success[goal.target]) == 1.0
    assert bool(v.evidence.reached[goal.target].all())        # all 9 reached: reach and official agree
    assert float(v.evidence.similarity[goal.target]) == float(v.evidence.official_similarity[goal.target])
    assert not c.backdoored
    k = int(c.evidence.official_similarity.argmax())
    assert float(c.evidence.official_similarity[k]) > 0.75    # the official rule would flag it ...
    assert int((~c.evidence.reached[k]).sum()) >= 3 and float(c.evidence.similarity[k]) == -1.0   # ... reach does not


def test_reach_rule_hand_built_rounds():
    """``reach``: an image that either perturbation leaves off k counts as similarity -1.  Nine
    cosines, q = 0.25 -> the third smallest (position 2): two misses leave the third smallest
    reached cosine, three misses give -1; ``reach=False`` is the plain (official) quantile."""
    from backdoorlab.defenses.detect.dl_tnd import _Round

    t, z = torch.tensor, torch.zeros
    cos = t([0.95, 0.9, 0.85, 0.8, 0.99, 0.97, 0.96, 0.94, 0.93])

    def rnd(reached):
        return _Round(5.0, cos, z(1, 4, 4), z(1, 4, 4), 1.0, 1.0, True, t(reached, dtype=torch.bool))

    two_miss = [True] * 7 + [False, False]           # misses on 0.94 and 0.93
    three_miss = [False] * 3 + [True] * 6            # misses on 0.95, 0.9, 0.85
    rounds = [[rnd([True] * 9)], [rnd(two_miss)], [rnd(three_miss)]]
    det = DLTND()
    sim, _ = det._scores(rounds, [0, 0, 0], reach=True)
    # all reached: sorted 0.8 0.85 0.9 ... -> 0.9; two misses (-1, -1, 0.8, ...) -> 0.8; three -> -1
    assert sim.tolist() == pytest.approx([0.9, 0.8, -1.0])
    plain, _ = det._scores(rounds, [0, 0, 0], reach=False)
    assert plain.tolist() == pytest.approx([0.9, 0.9, 0.9])


def test_reach_needs_both_perturbations_at_k(monkeypatch):
    """``reached`` is set per image of D_{k-} only when the universal AND the per-image perturbation send
    it to k: a per-image miss alone (the universal perturbation reaching k) clears it.  The solver is
    replaced by one that returns crafted logits (4 classes, one image each)."""
    from backdoorlab.defenses.detect import dl_tnd

    L = N = K = 4
    x, y = torch.zeros(N, 1, 4, 4), torch.arange(N)

    def fake(model, xs, shape, lr, const, steps, loss_fn, success_fn, step_cb):
        logits = torch.zeros(L, N, K)
        logits[torch.arange(L), :, torch.arange(L)] = 5.0          # every image lands on the problem's label
        if shape[1] == N:                                           # the per-image problems (eq. 4)
            logits[0, 1] = torch.tensor([0.0, 0.0, 5.0, 0.0])       # label 0's per-image perturbation of image 1 -> 2
        return {"m": torch.zeros(*shape, 1, 4, 4), "d": torch.zeros(*shape, 1, 4, 4), "logits": logits,
                "success": torch.ones(L, dtype=torch.bool) if success_fn is not None else None}

    monkeypatch.setattr(dl_tnd, "_proximal_round", fake)
    out = DLTND(steps=1, search_steps=2)._solve_labels(None, x, y, torch.arange(L), lambda i: None)
    for rd in out["rounds"][0]:                                     # D_{0-} = images 1, 2, 3
        assert rd.reached.tolist() == [False, True, True] and rd.hit == 1.0
    assert all(rd.reached.all() for k in range(1, L) for rd in out["rounds"][k])
    assert float(out["p_succ"][0]) == pytest.approx(2 / 3)


def test_revisit_pass_uses_the_reach_similarities():
    """The revisit pass compares rounds by the similarity the rule uses: a small-area round whose plain
    cosines are high but whose images were not reached replaces the best round only under the official rule."""
    from backdoorlab.defenses.detect.dl_tnd import _Round

    t, z = torch.tensor, torch.zeros
    unreached = _Round(0.0, t([0.9] * 5), z(1, 4, 4), z(1, 4, 4), 0.01, 0.0, False, torch.zeros(5, dtype=torch.bool))
    best = _Round(4.0, t([0.1, 0.2, 0.5, 0.6, 0.7]), z(1, 4, 4), z(1, 4, 4), 1.0, 1.0, True,
                  torch.ones(5, dtype=torch.bool))
    det = DLTND()
    plain, i_plain = det._scores([[unreached, best]], [1], reach=False)
    reach, i_reach = det._scores([[unreached, best]], [1], reach=True)
    assert i_plain == [0] and float(plain[0]) == pytest.approx(0.9)     # q25 0.9 > the best round's median 0.5
    assert i_reach == [1] and float(reach[0]) == pytest.approx(0.2)     # -1 everywhere: the best round stays
