"""Trojaning attack: equations checked against literal transcriptions, stages, and the contract."""
import math

import pytest
import torch

from backdoorlab.attacks import ATTACKS, TrojanNN
from backdoorlab.attacks.trojannn import total_variation, trojan_mask, tv_denoise
from backdoorlab.triggers import PatchTrigger
from backdoorlab.types import Implanted, TriggerGoal

CHEAP = dict(trigger_steps=20, samples_per_class=3, reverse_steps=8, retrain_epochs=2)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def literal_tv(y):  # eq. 4, one (H, W) image, loops
    H, W = y.shape
    v = 0.0
    for i in range(H):
        for j in range(W):
            dx = float(y[i, j + 1] - y[i, j]) if j + 1 < W else 0.0
            dy = float(y[i + 1, j] - y[i, j]) if i + 1 < H else 0.0
            v += math.sqrt(dx * dx + dy * dy)
    return v


def objective(x, y, lam):  # eq. 5 = eq. 3 + λ eq. 4
    return 0.5 * float(((x - y) ** 2).sum()) + lam * literal_tv(y)


def test_total_variation_matches_eq4():
    y = torch.rand(2, 1, 5, 6, generator=gen(0))
    assert total_variation(y)[1] == pytest.approx(literal_tv(y[1, 0]), rel=1e-5)


def test_tv_denoise_minimises_eq5():
    x = torch.rand(1, 1, 6, 6, generator=gen(1))
    lam = 0.1
    y = tv_denoise(x, lam, iters=200)
    best = objective(x[0, 0], y[0, 0], lam)
    assert best < objective(x[0, 0], x[0, 0], lam)                       # better than no denoising
    assert best < objective(x[0, 0], torch.full_like(x[0, 0], float(x.mean())), lam)
    for _ in range(20):                                                  # and than random nearby points
        z = y[0, 0] + 0.01 * torch.randn(6, 6, generator=gen(2))
        assert best <= objective(x[0, 0], z, lam) + 1e-6
    c = torch.full((1, 1, 4, 4), 0.3)
    assert torch.allclose(tv_denoise(c, 0.5), c)                         # a flat image is a fixed point


def test_eq2_selects_neuron_with_largest_abs_weight_sum(clean_model):
    m = TrojanNN(**CHEAP)
    assert m.layer_name(clean_model) == "body.fc1"
    w = clean_model.body.fc1.weight.detach()
    assert m.select_neurons(clean_model) == [int(w.abs().sum(1).argmax())]
    assert TrojanNN(num_neurons=3).select_neurons(clean_model) == w.abs().sum(1).topk(3).indices.tolist()
    assert TrojanNN(selection="output", target=7).select_neurons(clean_model) == [7]
    r = TrojanNN(selection="random").select_neurons(clean_model, gen(0))
    assert r == TrojanNN(selection="random").select_neurons(clean_model, gen(0))


def test_masks_shape_size_transparency():
    sq = trojan_mask((1, 28, 28), "square", 0.07)
    assert int(sq.sum()) == 7 * 7                                        # round(sqrt(0.07 * 784)) = 7
    wm = trojan_mask((1, 28, 28), "watermark", 0.07)                     # diagonals every 14 pixels
    assert abs(float(wm.mean()) - 1 / 14) < 0.02 and wm[0, 0, 0] == 1 and wm[0, 27, 27] == 0
    logo = torch.zeros(10, 10)
    logo[:5] = 1
    lg = trojan_mask((1, 28, 28), "logo", 0.07, logo, "0,0")
    assert lg[0, :3, :7].min() == 1 and lg[0, 4:7, :7].max() == 0
    assert trojan_mask((1, 28, 28), "square", 0.1, position="16,16")[0, 16:25, 16:25].min() == 1


def test_algorithm1_drives_the_neuron_up_inside_the_mask_only(clean_model):
    a = TrojanNN(size=0.25, position="center", trigger_steps=60, transparency=0.3)
    n = a.select_neurons(clean_model)
    trig, reached = a.generate_trigger(clean_model, n, (1, 8, 8), gen(0))
    M = a.mask((1, 8, 8))
    assert isinstance(trig, PatchTrigger)
    assert torch.allclose(trig.mask, 0.7 * M)
    assert float(trig.pattern[:, M[0] == 0].abs().max()) == 0.0
    with torch.no_grad():
        init = a.neuron_values(clean_model, (M * 0.5).unsqueeze(0), n)[0]
    assert float(reached[0]) > float(init[0]) + 1.0


def test_algorithm2_reverses_inputs_of_every_label(clean_model):
    x, y = TrojanNN(samples_per_class=2, reverse_steps=60).reverse_engineer(clean_model, (1, 8, 8), 10, gen(0))
    assert x.shape == (20, 1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert float((y == torch.arange(10).repeat_interleave(2)).float().mean()) >= 0.85


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [p.requires_grad for p in model.parameters()],
            [m.training for m in model.modules()])


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) + sum(
        len(p._backward_hooks or {}) for p in model.parameters())


def test_implant_contract(clean_model, digits):
    _, test = digits
    before = _state(clean_model)
    a = TrojanNN(target=2, **CHEAP)
    r1 = a.implant(clean_model, test, generator=gen(5))
    assert isinstance(r1, Implanted) and isinstance(r1.goal, TriggerGoal) and r1.goal.target == 2
    after = _state(clean_model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]
    assert _hooks(clean_model) == 0 and _hooks(r1.model) == 0
    assert all(p.requires_grad for p in r1.model.parameters())
    for k in ("trigger_seconds", "reverse_seconds", "retrain_seconds", "orig_before", "orig_after", "orig_tri"):
        assert k in r1.summary
    r2 = a.implant(clean_model, None, generator=gen(5))
    assert all(torch.equal(v, r2.model.state_dict()[k]) for k, v in r1.model.state_dict().items())
    # "neurons" scope: only the selected row of fc1 and its column of the head changed
    n = r1.summary["neurons"][0]
    with torch.no_grad():
        d1 = (r1.model.body.fc1.weight - clean_model.body.fc1.weight).abs().sum(1)
        dh = (r1.model.head.weight - clean_model.head.weight).abs().sum(0)
    assert float(d1[n]) > 0 and float(d1.sum() - d1[n]) == 0 and float(dh.sum() - dh[n]) == 0
    assert torch.equal(r1.model.body.conv1.weight, clean_model.body.conv1.weight)


@pytest.mark.parametrize("kw, name", [({"size": 0.0}, "TrojanNN.size"), ({"transparency": 1.0}, "TrojanNN.transparency"),
                                      ({"selection": "best"}, "TrojanNN.selection"),
                                      ({"mask_shape": "logo"}, "TrojanNN.logo"),
                                      ({"trigger_lr": math.nan}, "TrojanNN.trigger_lr"),
                                      ({"retrain_scope": "x"}, "TrojanNN.retrain_scope")])
def test_invalid_fields_named(kw, name):
    with pytest.raises(ValueError, match=name):
        TrojanNN(**kw)


def test_registered():
    assert ATTACKS["trojannn"] is TrojanNN
