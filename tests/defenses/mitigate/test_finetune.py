"""Retraining (seed 000, exercise 2): equals plain ``training.fit`` on a copy, and cannot remove a
backdoor that the clean data never activates."""
from __future__ import annotations

import pytest
import torch

from backdoorlab.data import clean_subset
from backdoorlab.defenses.mitigate import FineTune
from backdoorlab.metrics import attack_success_rate
from backdoorlab.training import fit
from backdoorlab.types import TriggerGoal


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_finetune_is_fit_on_a_copy(badnets, digits):
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=5, generator=gen(0))
    calls = []
    r = FineTune(epochs=2, lr=0.02, batch_size=16).repair(model, clean, generator=gen(3),
                                                           progress=lambda d, t: calls.append((d, t)))
    ref = FineTune(epochs=1).repair(model, clean).model  # any copy, then retrain it by hand
    ref.load_state_dict(model.state_dict())
    fit(ref, clean, epochs=2, batch_size=16, lr=0.02, generator=gen(3))
    a, b = r.model.state_dict(), ref.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = 2 * -(-len(clean) // 16)
    assert calls[-1] == (steps, steps) and len(calls) == steps
    assert r.summary["steps"] == steps


def test_retraining_keeps_a_backdoor_clean_data_never_activates(handwired, digits):
    """The hand-wired trigger neuron is 0 on every clean image, so the CE gradient of its head weight
    is exactly 0: retraining only shrinks it by weight decay, and the ASR stays 100%."""
    backdoored, _, trig, target = handwired
    train, test = digits
    clean = clean_subset(train, fraction=0.2, generator=gen(1))
    goal = TriggerGoal(trigger=trig, target=target)
    assert attack_success_rate(backdoored, goal, test) == 1.0
    r = FineTune(epochs=5, lr=0.05).repair(backdoored, clean, generator=gen(2))
    assert attack_success_rate(r.model, goal, test) == 1.0
    w0 = backdoored.head.weight[target, -1]
    w1 = r.model.head.weight[target, -1]
    assert 0.95 * w0 < w1 <= w0  # only weight decay (5 epochs x 4 steps, lr <= 0.05, 5e-4) acted


def test_rejects_images_outside_unit_range(badnets):
    model, _, _ = badnets
    x = torch.full((4, 1, 8, 8), 2.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FineTune().repair(model, (x, torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="FineTune.optimizer"):
        FineTune(optimizer="rmsprop")
