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


def test_filter_ranks_the_trigger_neuron_first(handwired, digits):
    model, _, trig, _ = handwired
    _, test = digits
    D = model.head.in_features - 1          # the hand-wired trigger neuron is the last feature
    gap = activation_gap(model, test.x[:100], trig)
    assert int(gap.argmax()) == D and float(gap[D]) == pytest.approx(0.5)   # s = 1/2 when stamped
    assert int(NCFilter(trigger=trig).neurons(model, test.x[:100])[0]) == D


def test_guarded_filter_catches_stamped_inputs(handwired, digits):
    model, _, trig, _ = handwired
    _, test = digits
    guard = Guard.calibrate(NCFilter(trigger=trig), model, test.x[:300], fpr=0.05)
    stamped = guard(trig.apply(test.x[300:]))
    clean = guard(test.x[300:])
    assert float(stamped.flagged.float().mean()) >= 0.95
    assert float(clean.flagged.float().mean()) <= 0.15


def test_prune_with_the_true_trigger_removes_the_trigger_neuron(handwired, digits):
    model, _, trig, target = handwired
    train, test = digits
    goal = TriggerGoal(trigger=trig, target=target)
    r = NCPrune(trigger=trig, target=target).repair(model, (train.x[:300], train.y[:300]), generator=gen(0))
    D = model.head.in_features - 1
    assert r.summary["neurons"][0] == D and r.summary["repaired"]
    assert attack_success_rate(r.model, goal, test) <= 0.02
    assert clean_accuracy(r.model, test) >= clean_accuracy(model, test) - 0.02
    curve = r.summary["curve"]
    assert curve[0]["pruned"] == 0 and curve[0]["trigger_success"] > 0.95


def test_prune_with_the_reversed_trigger(handwired, digits):
    model, _, trig, target = handwired
    train, test = digits
    r = NCPrune(detector=FAST).repair(model, (train.x[:300], train.y[:300]), generator=gen(0))
    assert r.summary["target"] == target and r.summary["flagged"]
    assert attack_success_rate(r.model, TriggerGoal(trigger=trig, target=target), test) <= 0.05
    assert isinstance(r.summary["trigger"], type(trig))


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


def test_unflagged_model_is_returned_unchanged(handwired, digits):
    _, twin, _, _ = handwired
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
