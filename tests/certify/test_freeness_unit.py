"""Unit checks: the exact Farkas checker, regions, input validation, the CLI and a BadNets MLP."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from backdoorlab.certify import CERTIFIERS
from backdoorlab.certify._lp import Encoded, farkas_check
from backdoorlab.certify.freeness import FreenessVerifier, TriggerRegion, patch_family


def _lp(rows, lo, hi):
    # rows: x0 + x1 >= 1.5 and x0 <= 0.2 over the box [0, 1]^2 (infeasible only with x1 <= 0.5)
    return Encoded(sp.csr_matrix(np.array(rows, float)), np.array(lo, float), np.array(hi, float),
                   np.zeros(2), np.array([1.0, 0.5]), np.zeros(2, bool), 2)


def test_farkas_checker_accepts_a_valid_ray_and_rejects_a_wrong_one():
    enc = _lp([[1, 1], [1, 0]], [1.5, -np.inf], [np.inf, 0.2])
    # y = (1, -1): y^T A x = x1 <= 0.5 but >= 1.5 - 0.2 = 1.3: contradiction
    assert farkas_check(enc, np.array([1.0, -1.0]))
    assert not farkas_check(enc, np.array([-1.0, 1.0]))  # wrong sign: needs infinite row bounds
    assert not farkas_check(enc, np.array([1.0, 0.0]))  # x0 + x1 >= 1.5 alone is satisfiable
    feasible = _lp([[1, 1], [1, 0]], [0.6, -np.inf], [np.inf, 0.2])  # x = (0.2, 0.5) satisfies it
    assert not farkas_check(feasible, np.array([1.0, -1.0]))


def test_farkas_checker_is_exact_at_the_boundary():
    # 0.1 + 0.2 in floats: x0 + x1 >= 0.30000000000000004 with x0 <= 0.1, x1 <= 0.2 is infeasible
    # in exact arithmetic of these floats by about 2.8e-17; a float check could not tell.
    enc = Encoded(sp.csr_matrix(np.array([[1.0, 1.0]])), np.array([0.1 + 0.2]), np.array([np.inf]),
                  np.zeros(2), np.array([0.1, 0.2]), np.zeros(2, bool), 2)
    from fractions import Fraction
    assert Fraction(0.1) + Fraction(0.2) < Fraction(0.1 + 0.2)
    assert farkas_check(enc, np.array([1.0]))


def test_regions_and_family():
    fam = patch_family((1, 8, 8), 3)
    assert len(fam) == 36 and fam[0].name == "3x3@0,0" and fam[-1].name == "3x3@5,5"
    r = fam[-1]
    x = torch.zeros(2, 1, 8, 8)
    s = r.stamp(x, torch.full((9,), 0.7))
    assert float(s.sum()) == pytest.approx(2 * 9 * 0.7) and float(s[0, 0, 5:, 5:].min()) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="TriggerRegion.mask"):
        TriggerRegion(mask=torch.zeros(1, 2, 2))


def test_registry_and_validation():
    from torch import nn

    assert CERTIFIERS["freeness"] is FreenessVerifier
    with pytest.raises(ValueError, match="FreenessVerifier.milp_time_limit"):
        FreenessVerifier(milp_time_limit=0)
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3))
    with pytest.raises(TypeError, match="MaxPool2d"):
        FreenessVerifier().certify(pooled, torch.zeros(1, 1, 8, 8), patch_family((1, 8, 8), 2)[:1])


def test_small_cnn_is_unrolled_exactly():
    """Conv2d layers are read as exact matrices: the float64 network equals the model."""
    from torch import nn

    from backdoorlab.certify.bounds import relu_network

    g = torch.Generator().manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)).double()
    x = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    net = relu_network(cnn, (1, 8, 8))
    assert torch.allclose(net.logits(net.normalise(x)), cnn(x), atol=1e-12)
    certs = FreenessVerifier().certify(cnn, x[:2], patch_family((1, 8, 8), 2)[:4], targets=[0, 1])
    assert len(certs) == 2 and all(c.status in ("verified", "falsified") for c in certs)


@pytest.fixture(scope="module")
def digits_mlps(digits):
    """A clean MLP and a BadNets one (2x2 white patch at the bottom-right corner -> 0) on digits."""
    from backdoorlab.attacks import BadNets
    from backdoorlab.models import build
    from backdoorlab.training import fit, init_weights
    from backdoorlab.triggers import PatchTrigger

    train, _ = digits
    info = train.info
    trig = PatchTrigger.square(info.input_shape, 2, "bottom-right", margin=0)
    out = []
    for seed, data in ((0, train), (1, BadNets(trigger=trig, target=0, rate=0.1).poison(
            train, generator=torch.Generator().manual_seed(1)).dataset)):
        g = torch.Generator().manual_seed(seed)
        m = init_weights(build("mlp", input_shape=info.input_shape, num_classes=10, hidden=[16, 16],
                               mean=info.mean, std=info.std), g)
        fit(m, data, epochs=8, batch_size=64, lr=0.05, generator=g)
        out.append(m.eval())
    return out[0], out[1], trig


def test_badnets_mlp_falsified_and_clean_twin_verified(digits, digits_mlps):
    clean, bad, trig = digits_mlps
    _, test = digits
    x, y = test.x[:20], test.y[:20]
    region = TriggerRegion.from_trigger(trig)
    v = FreenessVerifier(milp_time_limit=10)
    cb = v.certify(bad, x, region, targets=0, labels=y)[0]
    assert cb.status == "falsified" and cb.region.name == "2x2@6,6"
    with torch.no_grad():
        assert (bad(cb.stamp(x[list(cb.image_indices)])).argmax(1) == 0).all()
    cc = v.certify(clean, x, patch_family(test.info.input_shape, 2), targets=0, labels=y)[0]
    assert cc.status == "verified" and len(cc.positions) == 49
    assert all(i not in cc.image_indices for i in torch.nonzero(y == 0).flatten().tolist())


def test_cli_verify(tmp_path, digits_mlps, capsys, digits):
    from backdoorlab.cli import main
    from backdoorlab.io import save_model

    _, bad, _ = digits_mlps
    path = tmp_path / "bad.safetensors"
    save_model(path, bad, dataset=digits[0].info.to_json())
    assert main(["verify", str(path), "--target", "0", "--patch", "2x2@6,6", "--images", "10",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    c = out["certificates"][0]
    assert c["status"] == "falsified" and c["trigger_region"] == "2x2@6,6" and len(c["counterexample"]) == 4
    assert main(["verify", str(path), "--target", "3", "--patch", "2x2@6,6", "--statistical",
                 "--rate", "0.9", "--confidence", "0.99", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["certificates"][0]
    assert s["status"] == "verified" and s["rounds"] == 6 and s["confidence"] == pytest.approx(1 - 0.40951 ** 6, rel=1e-4)
    assert main(["verify", str(path), "--patch", "2x2@nowhere"]) == 2
