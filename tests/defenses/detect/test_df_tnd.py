"""DF-TND: the simplex projection against hand-computed points and the official bisection, the
margin rule on hand-made logit increases, a planted neuron that responds far more than any clean
one (its label's logit increase clears the others by the margin), no data needed; and (slow) the
MNIST BadNets model and a clean one."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from backdoorlab.defenses.detect import DETECTORS, DFTND
from backdoorlab.defenses.detect.df_tnd import THRESHOLD, _project_simplex, label_margins, margin_rule

sys.path.insert(0, str(Path(__file__).parent))
from _planted import PIXEL, planted  # noqa: E402


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


@pytest.fixture(scope="module")
def verdicts(clean_model):
    det = DFTND(steps=80, refine_steps=40)
    # the planted neuron r = 20 * x_p responds far above the clean features; its label gains 100 * x_p
    model = planted(clean_model, target=3, gain=20.0)
    return det.detect(model, None, generator=gen(0)), det.detect(clean_model, None, generator=gen(0)), model


def test_planted_neuron_label_is_the_outlier(verdicts):
    v, _, model = verdicts
    ev = v.evidence
    D = model.head.in_features - 1                      # index of the planted neuron
    assert ev.top_neurons[0] == D and float(ev.neuron_weights[D]) > 0.5
    # pixel p of the refined trigger is set to 1 with mask 1
    assert float(ev.trigger.mask[0, PIXEL[0], PIXEL[1]]) == 1.0
    assert float(ev.trigger.pattern[0, PIXEL[0], PIXEL[1]]) == 1.0
    assert int(ev.logit_increase.argmax()) == 3 and v.suspects == (3,) and v.backdoored
    L = ev.logit_increase
    assert v.score == pytest.approx(float(L[3] - L[torch.arange(10) != 3].max().clamp_min(0)))
    assert v.score > v.threshold == THRESHOLD
    assert ev.noise_inputs == 10 and len(ev.logit_increase) == 10


def test_clean_twin_margin_is_far_below_the_planted_one(verdicts):
    v, twin, _ = verdicts
    assert twin.score < v.score / 2
    assert float(twin.evidence.logit_increase[3]) < float(v.evidence.logit_increase[3]) / 2


def test_margin_rule_hand_computed():
    # a common rise of two labels (clean activation maximisation) is no trojan: margin 10 - 9.5
    L = torch.tensor([10.0, 9.5, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert margin_rule(L, 3.0) == (pytest.approx(0.5), [])
    # the old MAD rule flagged exactly this pattern: anomaly index of label 0 is huge
    from backdoorlab._stats import anomaly_index
    assert float(anomaly_index(L)[0]) > 3.0
    # one label alone: margin over the next increase (here 2.0)
    L = torch.tensor([0.5, 2.0, 0.0, 30.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert margin_rule(L, 3.0) == (pytest.approx(28.0), [3])
    assert margin_rule(L, 28.5) == (pytest.approx(28.0), [])
    # per label: L_k minus the largest other increase (30 for all but label 3)
    expected = torch.tensor([-29.5, -28.0, -30.0, 28.0, -34.0, -30.0, -30.0, -30.0, -30.0, -30.0])
    assert torch.allclose(label_margins(L), expected)
    # all others fell: the margin is measured from 0, so a small rise is not enough
    L = torch.tensor([2.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0])
    assert margin_rule(L, 3.0) == (pytest.approx(2.0), [])


def test_verdict_follows_the_margin_rule(verdicts):
    v, twin, model = verdicts
    for verdict in (v, twin):
        margin, flagged = margin_rule(verdict.evidence.logit_increase, verdict.threshold)
        assert verdict.score == pytest.approx(margin) and list(verdict.suspects) == flagged
        assert torch.equal(verdict.evidence.margin, label_margins(verdict.evidence.logit_increase))
    # same seed, threshold just above the planted margin: same L, nothing flagged
    above = DFTND(steps=80, refine_steps=40, threshold=v.score + 0.01).detect(model, None, generator=gen(0))
    assert torch.equal(above.evidence.logit_increase, v.evidence.logit_increase) and not above.backdoored


def test_input_shape_needed(clean_model):
    class Bare(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)
    with pytest.raises(ValueError, match="input shape"):
        DFTND(steps=1).detect(Bare(), None)


@pytest.mark.parametrize("field,value", [("noise_inputs", 0), ("step_size", 0.0), ("threshold", -1.0),
                                         ("lam", -0.1), ("mask_init", 1.5)])
def test_invalid_fields_name_themselves(field, value):
    with pytest.raises(ValueError, match=rf"DFTND\.{field} must"):
        DFTND(**{field: value})


@pytest.mark.slow
def test_mnist_badnets_found_without_data():
    from backdoorlab.io import load_ground_truth, load_model, truth_path

    # members of benchmarks/population.py (the detection population; DF-TND's threshold was set on
    # other clean models, runs/dftnd-calib, not on these)
    cache = Path(__file__).resolve().parents[3] / "runs" / "population"
    bd, cl = cache / "patch3-br-t5.safetensors", cache / "clean-s0.safetensors"
    if not (bd.exists() and cl.exists()):
        pytest.skip("run benchmarks/population.py first (trains the MNIST detection population)")
    goal = load_ground_truth(truth_path(bd))[0]
    v = DFTND().detect(load_model(bd)[0], None, generator=gen(0))
    assert v.backdoored and v.suspects[0] == goal.target
    assert not DFTND().detect(load_model(cl)[0], None, generator=gen(0)).backdoored
