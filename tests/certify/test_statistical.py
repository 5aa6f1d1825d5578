"""Problem 2: the arithmetic of (1) and (2) against hand-computed numbers and the note's table, and
the round outcomes / SPRT decision on a network whose true backdoor success rate is known."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backdoorlab.certify.freeness import TriggerRegion
from backdoorlab.certify.statistical import (SPRT, StatisticalVerifier, binomial_p_value, binomial_rounds,
                                             round_error)


@pytest.mark.parametrize("rate,k,p,sprt_n,binom_n", [
    (0.9, 5, 0.410, 95, 6), (0.9, 10, 0.651, 150, 11), (0.8, 5, 0.672, 155, 12),
    (0.8, 10, 0.893, 206, 41), (0.95, 5, 0.226, 52, 4)])
def test_round_counts_match_the_note_table(rate, k, p, sprt_n, binom_n):
    assert round(round_error(rate, k), 3) == p
    assert SPRT.for_rate(rate, k).rounds_if_all_unsat() == sprt_n
    assert binomial_rounds(rate, k, 0.01) == binom_n


def test_binomial_p_value_by_hand():
    p = 1 - 0.9 ** 5  # 0.40951
    assert binomial_p_value(6, 6, 0.9, 5) == pytest.approx(p ** 6)
    # P[Binom(3, p) >= 2] = 3 p^2 (1 - p) + p^3
    assert binomial_p_value(2, 3, 0.9, 5) == pytest.approx(3 * p * p * (1 - p) + p ** 3)
    assert binomial_p_value(0, 3, 0.9, 5) == 1.0


def known_rate_network():
    """o0 - o1 = 2 relu(x2 - 2 x1) - 0.5 on 1x2 images; the trigger overwrites x2 in [0, 1].
    Images with x1 = 0 are flipped to class 0 by any t > 1/4; images with x1 = 1 never are.
    A pool with half x1 = 0 has a best trigger success rate of exactly 0.5."""
    m = nn.Sequential(nn.Flatten(), nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([[-2.0, 1.0]]))
        m[1].bias.zero_()
        m[3].weight.copy_(torch.tensor([[2.0], [0.0]]))
        m[3].bias.copy_(torch.tensor([0.0, 0.5]))
    x = torch.zeros(50, 1, 1, 2)
    x[25:, 0, 0, 0] = 1.0  # 25 resistant images out of 50
    y = torch.ones(50, dtype=torch.long)
    return m.eval(), x, y, TriggerRegion(mask=torch.tensor([[[False, True]]]), name="x2")


def _truth(cert):
    """A round is UNSAT iff it drew a resistant image (index >= 25): the exact answer."""
    return ["unsat" if max(imgs) >= 25 else "sat-low-rate" for imgs in cert.images]


def test_sprt_decision_on_known_rate_network():
    m, x, y, reg = known_rate_network()
    v = StatisticalVerifier(rate=0.9, images_per_round=5, test="sprt", max_rounds=400)
    c = v.certify(m, x, y, reg, target=0, generator=torch.Generator().manual_seed(0))
    assert list(c.outcomes) == _truth(c)  # the verifier decides every round exactly
    # replay Wald's test on the outcomes: the decision and its round agree
    s = SPRT.for_rate(0.9, 5)
    decided_at = next(i + 1 for i, o in enumerate(c.outcomes) if s.update(o == "unsat") is not None)
    assert s.decision == "no-backdoor" and decided_at == c.rounds
    assert c.status == "verified" and c.confidence == pytest.approx(0.99)
    # true rate 0.5 < 0.9: P[UNSAT] = 1 - 0.5^5 = 0.97 > p0 = 0.42, so "no backdoor with rate >= 0.9"
    assert c.round_error == pytest.approx(1 - 0.9 ** 5)


def test_binomial_on_known_rate_network():
    m, x, y, reg = known_rate_network()
    c = StatisticalVerifier(rate=0.9, images_per_round=5, rounds=30).certify(
        m, x, y, reg, target=0, generator=torch.Generator().manual_seed(1))
    assert list(c.outcomes) == _truth(c)
    pv = binomial_p_value(c.unsat_rounds, 30, 0.9, 5)
    assert c.p_value == pytest.approx(pv) and c.confidence == pytest.approx(1 - pv)
    assert c.status == ("verified" if pv <= 0.01 else "undecided")


def test_backdoor_above_rate_is_found_with_its_rate():
    m, x, y, reg = known_rate_network()
    c = StatisticalVerifier(rate=0.4, images_per_round=2).certify(
        m, x, y, reg, target=0, generator=torch.Generator().manual_seed(0))
    assert c.status == "falsified" and c.trigger_rate == pytest.approx(0.5)
    assert c.outcomes[-1] == "trigger" and all(o == "unsat" for o in c.outcomes[:-1])
    assert float(c.trigger[0]) > 0.25


def test_clean_twin_is_verified_in_the_minimal_number_of_rounds():
    m, x, y, reg = known_rate_network()
    x = x.clone()
    x[:, 0, 0, 0] = 1.0  # every image resists: no trigger at all
    c = StatisticalVerifier(rate=0.9, images_per_round=5).certify(m, x, y, reg, target=0)
    assert c.status == "verified" and c.rounds == 6 and c.unsat_rounds == 6
    assert c.confidence == pytest.approx(1 - (1 - 0.9 ** 5) ** 6)
    assert math.isclose(c.p_value, 0.40951 ** 6, rel_tol=1e-9)


def test_invalid_fields():
    with pytest.raises(ValueError, match="StatisticalVerifier.rate"):
        StatisticalVerifier(rate=1.0)
    with pytest.raises(ValueError, match="StatisticalVerifier.test"):
        StatisticalVerifier(test="t")
