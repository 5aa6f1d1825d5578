"""Exercise 4 of seed 000 on the three hand-checked 2-2-2 networks (derivations in
``backdoorlab.certify.exercise4``)."""
from __future__ import annotations

import pytest
import torch

from backdoorlab.certify import exercise4 as ex
from backdoorlab.certify.freeness import FreenessVerifier

# per-image open trigger sets (o0 - o1 > 0) derived by hand in the module docstring
HAND_SETS = {
    "F1": [(-1.0, -1 / 3), (-1.0, 1 / 6), (0.0, 0.6)],
    "F2": [(-1.0, -0.25), (-1.0, 0.25), (-0.5, 0.75)],
    "F3": [(-1.0, -1 / 3), (-1.0, 1 / 6), (-1 / 3, 2 / 3)],
}


@pytest.mark.parametrize("name", ["F1", "F2", "F3"])
def test_hand_derived_trigger_sets(name):
    """A fine grid of t agrees with the hand-derived per-image intervals (away from their ends)."""
    net, X = ex.network(name), ex.images()
    ts = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    with torch.no_grad():
        assert (net(X).argmax(1) == 1).all()  # no image is class 0 untriggered
        for k, (a, b) in enumerate(HAND_SETS[name]):
            xs = X[k:k + 1].repeat(len(ts), 1, 1, 1)
            xs[:, 0, 0, 1] = ts  # the trigger overwrites i2
            z = net(xs)
            inside = z[:, 0] - z[:, 1] > 0
            away = ((ts - a).abs() > 1e-3) & ((ts - b).abs() > 1e-3)
            expect = (ts > a) & (ts < b) if a > -1 else (ts < b)
            assert torch.equal(inside[away], expect[away]), (name, k)


def test_exercise4_answers():
    v = FreenessVerifier()
    got = {n: v.certify(ex.network(n), ex.images(), ex.region(), targets=0)[0] for n in ex.NETWORKS}
    assert {n: c.status for n, c in got.items()} == ex.EXPECTED
    # F1: refuted by the triangle LP with an exact Farkas certificate (A and C are disjoint)
    assert got["F1"].positions[0].method == "lp" and got["F1"].counterexample is None
    # F2: a concrete trigger inside the common set (-1/2, -1/4) that flips all three inputs
    t = float(got["F2"].counterexample[0])
    assert -0.5 < t < -0.25
    with torch.no_grad():
        assert (ex.network("F2")(got["F2"].stamp(ex.images())).argmax(1) == 0).all()
    # F3: the only solution of the non-strict problem is the tie t = -1/3: boundary, not a backdoor
    assert got["F3"].counterexample is not None
    assert abs(float(got["F3"].counterexample[0]) + 1 / 3) < 1e-6
    assert abs(got["F3"].positions[0].margin) < 1e-6


def test_all_targets_in_one_call():
    """Target 1 is every image's own class: the untriggered value t = i2 already works."""
    certs = FreenessVerifier().certify(ex.network("F1"), ex.images(), ex.region())
    assert [c.target for c in certs] == [0, 1]
    assert certs[0].status == "verified" and certs[1].status == "falsified"
