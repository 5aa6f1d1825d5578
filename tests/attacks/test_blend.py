"""Blend (Chen et al. 2017) and the invisible additive / warping triggers."""
import math

import pytest
import torch

from backdoorlab.attacks import ATTACKS, AdditiveTrigger, Blend, WarpTrigger
from backdoorlab.io import load_ground_truth, save_ground_truth
from backdoorlab.metrics import attack_success_rate, clean_accuracy
from backdoorlab.triggers import BlendTrigger
from backdoorlab.types import TriggerGoal

from backdoorlab.models import build
from backdoorlab.training import fit, init_weights


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train_digits(dataset, info, seed: int = 0):
    m = init_weights(build("digits-cnn", input_shape=info.input_shape, num_classes=info.num_classes,
                           mean=info.mean, std=info.std), gen(seed))
    fit(m, dataset, epochs=30, batch_size=64, lr=0.05, generator=gen(seed))
    return m.eval()


def test_registered():
    assert ATTACKS["blend"] is Blend


def test_noise_blend_poison_formula(digits):
    train, _ = digits
    p = Blend(pattern="noise", alpha=0.2, target=0, rate=0.1).poison(train, generator=gen(3))
    trig = p.goal.trigger
    assert isinstance(trig, BlendTrigger) and trig.alpha == 0.2
    idx = p.poison_indices
    assert len(idx) == round(0.1 * len(train))
    assert bool((train.y[idx] != 0).all())                          # only non-target samples
    x, y = p.dataset.tensors()
    assert torch.allclose(x[idx], 0.8 * train.x[idx] + 0.2 * trig.pattern)
    assert bool((y[idx] == 0).all())
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(x[keep], train.x[keep]) and torch.equal(y[keep], train.y[keep])


def test_image_pattern_is_resized_key_image(digits):
    train, _ = digits
    key = torch.zeros(3, 16, 16)
    key[:, :8] = 1.0                                              # top half white
    trig = Blend(pattern="image", image=key, alpha=0.3).make_trigger((1, 8, 8))
    assert trig.pattern.shape == (1, 8, 8)
    assert float(trig.pattern[0, :3].min()) == pytest.approx(1.0) and float(trig.pattern[0, 5:].max()) == 0.0


def test_additive_trigger_bound_and_clip():
    t = AdditiveTrigger.random_signs((1, 4, 4), epsilon=0.05, generator=gen(0))
    assert t.epsilon == pytest.approx(0.05)
    x = torch.tensor([0.0, 0.5, 1.0]).repeat(6)[:16].reshape(1, 1, 4, 4)
    out = t.apply(x)
    assert torch.allclose(out, (x + t.delta).clamp(0, 1))
    assert float((out - x).abs().max()) <= 0.05 + 1e-7
    with pytest.raises(ValueError, match="AdditiveTrigger.delta"):
        AdditiveTrigger(delta=torch.full((1, 2, 2), 2.0))


def test_warp_zero_flow_is_identity_and_small_flow_is_small():
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(WarpTrigger(flow=torch.zeros(2, 8, 8)).apply(x), x, atol=1e-6)
    w = WarpTrigger.random((1, 8, 8), grid=4, strength=0.5, generator=gen(1))
    # displacement at most strength / H in grid units = 0.5 / 8 * (8 - 1) / 2 pixels < 0.25 px
    assert float(w.flow.abs().max()) <= 1.0
    assert float((w.apply(x) - x).abs().max()) < 0.5


@pytest.mark.parametrize("trig", [AdditiveTrigger.random_signs((1, 8, 8), generator=gen(2)),
                                  WarpTrigger.random((1, 8, 8), generator=gen(2))])
def test_new_triggers_roundtrip_through_ground_truth(tmp_path, trig):
    goal = TriggerGoal(trigger=trig, target=4)
    save_ground_truth(tmp_path / "t.truth.safetensors", goal, torch.tensor([1, 2]))
    back, idx, _ = load_ground_truth(tmp_path / "t.truth.safetensors")
    x = torch.rand(2, 1, 8, 8)
    assert back.target == 4 and torch.equal(idx, torch.tensor([1, 2]))
    assert torch.allclose(back.trigger.apply(x), trig.apply(x))
    assert trig.image().shape[1:] == (8, 8) and float(trig.image().min()) >= 0


@pytest.mark.parametrize("kw, name", [({"pattern": "stripes"}, "Blend.pattern"), ({"alpha": math.nan}, "Blend.alpha"),
                                      ({"rate": 0.0}, "Blend.rate"), ({"target": -1}, "Blend.target"),
                                      ({"pattern": "image"}, "Blend.image")])
def test_invalid_fields_named(kw, name):
    with pytest.raises(ValueError, match=name):
        Blend(**kw)


def test_blend_noise_backdoor_on_digits(digits, clean_model):
    train, test = digits
    p = Blend(pattern="noise", alpha=0.2, target=0, rate=0.1).poison(train, generator=gen(4))
    model = train_digits(p.dataset, train.info, seed=4)
    assert attack_success_rate(model, p.goal, test) >= 0.9
    assert clean_accuracy(model, test) >= clean_accuracy(clean_model, test) - 0.03
