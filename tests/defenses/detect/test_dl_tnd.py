"""DL-TND: the hinge losses against a literal transcription, the quantile rule on hand-computed
cosines, a planted one-pixel backdoor (its target's universal and per-image perturbations agree),
input checks; and (slow) the MNIST BadNets model and a clean one."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from backdoorlab.data import clean_subset
from backdoorlab.defenses.detect import DETECTORS, DLTND
from backdoorlab.defenses.detect.dl_tnd import _margin

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


@pytest.fixture(scope="module")
def planted_verdicts(clean_model, digits):
    train, _ = digits
    det = DLTND(steps=60, samples_per_class=2)
    model = planted(clean_model, target=3)
    return det.detect(model, train, generator=gen(1)), det.detect(clean_model, train, generator=gen(1))


def test_planted_target_has_agreeing_perturbations(planted_verdicts):
    v, twin = planted_verdicts
    ev = v.evidence
    assert ev.samples == 20 and len(ev.similarity) == 10
    # the one-pixel trigger sends every other-class image to 3, universally and per image
    assert float(ev.universal_success[3]) == 1.0 and float(ev.per_image_success[3]) == 1.0
    assert float(ev.similarity[3]) > 0.9 and 3 in v.suspects and v.backdoored
    assert int(ev.similarity.argmax()) == 3
    assert float(ev.similarity[3]) > float(twin.evidence.similarity[3])
    # the universal mask puts its largest weight on the planted pixel
    m = ev.triggers[3].mask[0]
    assert divmod(int(m.argmax()), m.shape[1]) == PIXEL
    assert v.score == pytest.approx(float(ev.similarity.max())) and v.threshold == 0.75


def test_needs_data_and_two_classes(clean_model, digits):
    train, _ = digits
    with pytest.raises(ValueError, match="DF-TND"):
        DLTND(steps=2).detect(clean_model, None)
    one = train.subset(torch.nonzero(train.y == 4).flatten()[:5])
    with pytest.raises(ValueError, match="at least 2 classes"):
        DLTND(steps=2).detect(clean_model, one)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        DLTND(steps=2).detect(clean_model, (train.x[:20] * 3, train.y[:20]))


@pytest.mark.parametrize("field,value", [("quantile", 1.5), ("threshold", 2.0), ("steps", 0), ("lam", -1.0),
                                         ("samples_per_class", 0)])
def test_invalid_fields_name_themselves(field, value):
    with pytest.raises(ValueError, match=rf"DLTND\.{field} must"):
        DLTND(**{field: value})


@pytest.mark.slow
def test_mnist_badnets_found_with_one_image_per_class(shared_data):
    from backdoorlab.io import load_ground_truth, load_model, truth_path

    # the inputs of benchmarks/detectors.py (= scan --clean-per-class 1 --seed 0): one generator draws
    # the images and then seeds the detector.  clean-s6 is a clean member DL-TND clears there (four
    # of the ten clean members are flagged at T = 0.75, see benchmarks/results/detectors.md).
    cache = Path(__file__).resolve().parents[3] / "runs" / "population"
    bd, cl = cache / "patch3-br-t5.safetensors", cache / "clean-s6.safetensors"
    if not (bd.exists() and cl.exists()):
        pytest.skip("run benchmarks/population.py first (trains the MNIST detection population)")
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
    assert not c.backdoored
