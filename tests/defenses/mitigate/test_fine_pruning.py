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


def test_preact_resnet_prunes_the_final_bn_channels_and_they_stay_dead(tmp_path):
    """Pre-activation ResNet: the last stage ends in a residual sum, so Fine-Pruning removes channels
    at the final BN + ReLU (``model.prune_layer``); a pruned channel's post-ReLU activation is exactly 0
    (eval and after fine-tuning), the batched sweep equals the literal loop, and the model round-trips
    through the safetensors file."""
    from backdoorlab.io import load_model, save_model
    from backdoorlab.models import build

    torch.manual_seed(0)
    model = build("preact-resnet18", input_shape=(3, 8, 8), num_classes=3, width=4).eval()
    x = torch.rand(24, 3, 8, 8, generator=gen(0))
    y = model(x).argmax(1)  # the model's own labels: accuracy 1 before pruning
    assert model.prune_layer == "body.bn" and model.last_conv == "body.layer4"
    bn = model.get_submodule("body.bn")
    acts, logits = layer_outputs(model, bn, x)
    order = acts.clamp_min(0).mean(dim=(0, 2, 3)).argsort()
    acc = pruning_accuracies(model, bn, x, y, order, acts, logits)
    for k in (1, 5, 16):  # literal: zero gamma/beta of the first k, run the whole model
        m = clone_model(model)
        with torch.no_grad():
            m.body.bn.weight[order[:k]] = 0
            m.body.bn.bias[order[:k]] = 0
        assert abs(float((predict(m, x) == y).float().mean()) - float(acc[k])) < 1e-6
    r = FinePruning(max_drop=0.5, epochs=1, batch_size=8).repair(model, (x, y), generator=gen(1))
    idx = torch.tensor(r.summary["pruned_channels"], dtype=torch.long)
    assert r.summary["layer"] == "body.bn" and r.summary["channels"] == 32 and len(idx) > 0
    path = save_model(tmp_path / "fp.safetensors", r.model)
    back = load_model(path)[0].eval()
    post, _ = layer_outputs(back, back.get_submodule("body.bn"), x)
    assert torch.count_nonzero(post.clamp_min(0)[:, idx]) == 0
    assert torch.allclose(back(x), r.model(x), atol=1e-6)
