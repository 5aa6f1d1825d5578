"""NAD: attention maps and the distillation loss by hand; with β = 0 the student is plain
retraining after the teacher's retraining."""
from __future__ import annotations

import math

import pytest
import torch

from backdoorlab.data import clean_subset
from backdoorlab.defenses.mitigate import NAD, FineTune
from backdoorlab.defenses.mitigate.nad import attention_map, nad_loss


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_attention_map_by_hand():
    # two channels over a 1x2 map: channel 0 = (3, 4), channel 1 = (0, -2)
    a = torch.tensor([[[[3.0, 4.0]], [[0.0, -2.0]]]])
    am = attention_map(a, p=2.0)  # mean_c |a|^2 = (4.5, 10), then unit L2 norm
    n = math.hypot(4.5, 10.0)
    assert torch.allclose(am, torch.tensor([[4.5 / n, 10.0 / n]]))
    am1 = attention_map(a, p=1.0)  # (1.5, 3) / |(1.5, 3)|
    assert torch.allclose(am1, torch.tensor([[1.5, 3.0]]) / math.hypot(1.5, 3.0))


def test_nad_loss_is_scale_free_mean_squared_difference():
    g = gen(0)
    s, t = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    assert nad_loss(s, s, 2.0) == 0
    assert nad_loss(s, 3 * s, 2.0) < 1e-12  # maps are normalised
    ds = attention_map(s, 2.0) - attention_map(t, 2.0)
    assert torch.allclose(nad_loss(t, s, 2.0), ds.pow(2).sum(1).mean() / 9)  # ||.||^2 / (H W), batch mean


def test_beta_zero_is_teacher_retraining_then_student_retraining(badnets, digits):
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=4, generator=gen(0))
    r = NAD(beta=0.0, teacher_epochs=1, epochs=2, lr=0.02, teacher_lr=0.03, batch_size=16).repair(
        model, clean, generator=gen(5))
    g = gen(5)
    FineTune(epochs=1, lr=0.03, batch_size=16).repair(model, clean, generator=g)  # teacher's draws
    ref = FineTune(epochs=2, lr=0.02, batch_size=16).repair(model, clean, generator=g).model
    a, b = r.model.state_dict(), ref.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_distillation_pulls_student_attention_to_teacher(badnets, digits):
    """With β > 0 the student's attention at the chosen layer ends closer to the teacher's."""
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=8, generator=gen(0))
    kw = dict(teacher_epochs=3, teacher_lr=0.05, epochs=3, lr=0.02, batch_size=16)
    teacher = FineTune(epochs=3, lr=0.05, batch_size=16).repair(model, clean, generator=gen(1)).model
    conv = model.last_conv

    def gap(student):
        out = {}
        hs = [m.get_submodule(conv).register_forward_hook(lambda _m, _i, o, k=k: out.__setitem__(k, o))
              for k, m in (("s", student), ("t", teacher))]
        with torch.no_grad():
            student(clean.x), teacher(clean.x)
        for h in hs:
            h.remove()
        return float(nad_loss(out["t"], out["s"], 2.0))

    plain = NAD(beta=0.0, **kw).repair(model, clean, generator=gen(1)).model
    distilled = NAD(beta=5000.0, **kw).repair(model, clean, generator=gen(1)).model
    assert gap(distilled) < 0.5 * gap(plain)


def test_layers_are_checked(badnets, digits):
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=2, generator=gen(0))
    with pytest.raises(ValueError, match="NAD.layers"):
        NAD(layers="body.missing").repair(model, clean)
    with pytest.raises(ValueError, match="NAD.beta"):
        NAD(beta=-1.0)


def test_divergence_guard_retrains_at_a_tenth_of_the_learning_rate(badnets, digits):
    """A student learning rate far too large for the model destroys it (clean-set accuracy near
    chance); the guard notices on the clean set and retrains at lr / 10 until it stays within
    ``max_accuracy_drop`` of the teacher."""
    model, _, _ = badnets
    clean = clean_subset(digits[0], per_class=8, generator=gen(0))
    kw = dict(teacher_epochs=1, teacher_lr=0.02, epochs=2, lr=30.0, batch_size=16)
    wild = NAD(retries=0, **kw).repair(model, clean, generator=gen(1)).summary
    acc = wild["clean_set_accuracy"]
    assert wild["lr"] == 30.0 and acc["student"] < acc["teacher"] - 0.1  # diverged, kept as is
    safe = NAD(retries=3, **kw).repair(model, clean, generator=gen(1)).summary
    acc = safe["clean_set_accuracy"]
    assert safe["lr"] < 30.0 and acc["student"] >= acc["teacher"] - 0.1
    assert safe["teacher_lr"] == 0.02  # the teacher was fine
