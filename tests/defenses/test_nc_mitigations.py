"""Neural Cleanse mitigations on planted ground truth: the input filter and pruning find the
hand-wired trigger neuron; unlearning removes the digits BadNets backdoor; the clean-images-only
control keeps it."""
from __future__ import annotations

import pytest
import torch

from backdoorlab.defenses.detect import NeuralCleanse
from backdoorlab.defenses.filter import FILTERS, Guard
from backdoorlab.defenses.filter.nc_filter import NCFilter, activation_gap
from backdoorlab.defenses.mitigate import MITIGATORS, NCPrune, NCUnlearn
from backdoorlab.metrics import attack_success_rate, clean_accuracy
from backdoorlab.types import TriggerGoal

FAST = NeuralCleanse(epochs=30, batches_per_epoch=5, batch_size=16, patience=2, early_stop_patience=3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registered():
    assert FILTERS["nc-filter"] is NCFilter
    assert MITIGATORS["nc-unlearn"] is NCUnlearn and MITIGATORS["nc-prune"] is NCPrune


def test_activation_gap_of_the_hand_wired_neuron(handwired, digits):
    model, _, trig, _ = handwired
    _, test = digits
    D = model.head.in_features - 1          # the hand-wired trigger neuron is the last feature
    gap = activation_gap(model, test.x[:100], trig)
    assert float(gap[D]) == pytest.approx(0.5)   # s = 1/2 on stamped inputs, 0 on clean ones


def test_guarded_filter_catches_stamped_inputs(badnets, digits):
    model, goal, _ = badnets
    _, test = digits
    guard = Guard.calibrate(NCFilter(trigger=goal.trigger), model, test.x[:300], fpr=0.05)
    held_x, held_y = test.x[300:], test.y[300:]
    stamped = guard(goal.trigger.apply(held_x[held_y != goal.target]))
    assert float(stamped.flagged.float().mean()) >= 0.8
    assert float(guard(held_x).flagged.float().mean()) <= 0.15
    assert len(NCFilter(trigger=goal.trigger).neurons(model, test.x[:100])) == 2   # ceil(1% of 128)


def test_prune_stop_rule_hand_made_curve():
    p = NCPrune(success_limit=0.05, max_accuracy_drop=0.05)
    # stops at the first level whose trigger success is <= 5%
    assert p._stop([(0, 0.99, 1.0), (5, 0.98, 0.5), (10, 0.97, 0.04), (15, 0.96, 0.0)]) == 10
    # ... unless the clean accuracy has dropped by more than 5 pt before that: keep the last level within budget
    assert p._stop([(0, 0.99, 1.0), (5, 0.95, 0.5), (10, 0.93, 0.3), (15, 0.90, 0.0)]) == 5


def test_prune_with_the_true_trigger(badnets, digits):
    model, goal, _ = badnets
    train, test = digits
    clean = (train.x[:400], train.y[:400])
    r = NCPrune(trigger=goal.trigger, target=goal.target).repair(model, clean, generator=gen(0))
    curve = {c["pruned"]: c for c in r.summary["curve"]}
    n = r.summary["pruned"]
    assert curve[0]["trigger_success"] > 0.9 and curve[0]["clean_accuracy"] == pytest.approx(
        clean_accuracy(model, clean), abs=1e-6)
    # the head-masked curve equals a real forward pass of the pruned model
    assert curve[n]["clean_accuracy"] == pytest.approx(clean_accuracy(r.model, clean), abs=1e-6)
    assert int((r.model.head.weight == 0).all(0).sum()) >= n
    # the stop rule: the chosen level removed the trigger, or the next one breaks the 5-pt budget
    levels = sorted(curve)
    nxt = levels[levels.index(n) + 1] if n != levels[-1] else None
    assert curve[n]["trigger_success"] <= 0.05 or (
        nxt is not None and curve[0]["clean_accuracy"] - curve[nxt]["clean_accuracy"] > 0.05)
    assert curve[n]["clean_accuracy"] >= curve[0]["clean_accuracy"] - 0.05
    assert attack_success_rate(r.model, goal, test) <= attack_success_rate(model, goal, test)


def test_unlearning_removes_badnets_and_clean_only_does_not(badnets, digits):
    model, goal, _ = badnets
    train, test = digits
    clean = (train.x[:400], train.y[:400])
    assert attack_success_rate(model, goal, test) > 0.9
    fixed = NCUnlearn(trigger=goal.trigger, target=goal.target, epochs=2, lr=0.02).repair(model, clean, generator=gen(1))
    assert attack_success_rate(fixed.model, goal, test) <= 0.1
    assert clean_accuracy(fixed.model, test) >= clean_accuracy(model, test) - 0.03
    assert fixed.summary["stamped"] == 80
    ctrl = NCUnlearn(stamp_fraction=0.0, epochs=2, lr=0.02).repair(model, clean, generator=gen(1))
    assert ctrl.summary["stamped"] == 0 and "trigger" not in ctrl.summary
    assert attack_success_rate(ctrl.model, goal, test) > 0.5


def test_unflagged_model_is_returned_unchanged(clean_model, digits):
    twin = clean_model
    train, _ = digits
    r = NCUnlearn(detector=FAST).repair(twin, (train.x[:300], train.y[:300]), generator=gen(0))
    assert not r.summary["repaired"] and not r.summary["flagged"] and "trigger" in r.summary
    assert all(torch.equal(a, b) for a, b in zip(r.model.state_dict().values(), twin.state_dict().values()))


@pytest.mark.parametrize("cls,field,value", [(NCUnlearn, "stamp_fraction", 1.5), (NCUnlearn, "lr", 0.0),
                                              (NCPrune, "success_limit", -0.1), (NCPrune, "step_fraction", 0.0),
                                              (NCFilter, "top_fraction", 0.0)])
def test_invalid_fields(cls, field, value):
    with pytest.raises(ValueError, match=f"{cls.__name__}.{field}"):
        cls(**{field: value})


def test_trigger_without_target_is_refused(handwired, digits):
    model, _, trig, _ = handwired
    train, _ = digits
    with pytest.raises(ValueError, match="target"):
        NCPrune(trigger=trig).repair(model, (train.x[:50], train.y[:50]))
