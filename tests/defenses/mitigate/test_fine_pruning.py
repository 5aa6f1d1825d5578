"""Fine-Pruning: the batched mask sweep equals a literal prune-and-evaluate loop; the stop rule and
the held-at-zero channels are exactly as the paper describes."""
from __future__ import annotations

import pytest
import torch

from backdoorlab._torch import clone_model, predict
from backdoorlab.data import clean_subset
from backdoorlab.defenses.mitigate import FinePruning
from backdoorlab.defenses.mitigate.fine_pruning import layer_outputs, pruning_accuracies


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def literal_sweep(model, layer: str, x, y):
    """Slow reference: for k = 0..C-1, zero the k least active channels' filters, run the whole model."""
    conv = model.get_submodule(layer)
    acts, _ = layer_outputs(model, conv, x)
    order = acts.clamp_min(0).mean(dim=(0, 2, 3)).argsort()
    accs = []
    for k in range(conv.out_channels):
        m = clone_model(model)
        c = m.get_submodule(layer)
        with torch.no_grad():
            c.weight[order[:k]] = 0
            c.bias[order[:k]] = 0
        accs.append(float((predict(m, x) == y).float().mean()))
    return order, torch.tensor(accs)


@pytest.mark.parametrize("which", ["badnets", "handwired"])
def test_batched_sweep_equals_literal_loop(which, badnets, handwired, digits):
    model = badnets[0] if which == "badnets" else handwired[0]  # hand-wired: tail reads x -> full path
    clean = clean_subset(digits[0], per_class=10, generator=gen(0))
    x, y = clean.x, clean.y
    conv = model.get_submodule(model.last_conv)
    order, ref = literal_sweep(model, model.last_conv, x, y)
    acts, logits = layer_outputs(model, conv, x)
    acc = pruning_accuracies(model, conv, x, y, order, acts, logits)
    assert torch.allclose(acc, ref, atol=1e-6)
    assert abs(float(acc[0]) - float((logits.argmax(1) == y).float().mean())) < 1e-6


def test_stop_rule_and_pruned_channels_stay_zero(badnets, digits):
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=10, generator=gen(0))
    _, ref = literal_sweep(model, model.last_conv, clean.x, clean.y)
    for budget in (0.0, 0.045, 1.0):
        r = FinePruning(max_drop=budget, epochs=1, lr=0.05).repair(model, clean, generator=gen(1))
        drop = ref[0] - ref
        expected = int((drop <= budget + 1e-12).long().cumprod(0).sum()) - 1  # eq. (1)
        assert r.summary["pruned"] == expected == len(r.summary["pruned_channels"])
        conv = r.model.get_submodule(model.last_conv)
        idx = torch.tensor(r.summary["pruned_channels"], dtype=torch.long)
        assert torch.count_nonzero(conv.weight[idx]) == 0 and torch.count_nonzero(conv.bias[idx]) == 0
    assert expected == conv.out_channels - 1  # budget 1: everything but one channel


def test_layer_must_be_a_conv(badnets, digits):
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=2, generator=gen(0))
    with pytest.raises(ValueError, match="FinePruning.layer"):
        FinePruning(layer="body.fc1").repair(model, clean)
    with pytest.raises(ValueError, match="FinePruning.layer"):
        FinePruning(layer="body.nope").repair(model, clean)
    with pytest.raises(ValueError, match="FinePruning.max_drop"):
        FinePruning(max_drop=1.5)
