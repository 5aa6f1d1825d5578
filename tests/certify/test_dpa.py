"""Deep Partition Aggregation: radius / tie rule, content-only partitions, members trained together."""
from __future__ import annotations

import itertools

import pytest
import torch

from backdoorlab.certify.dpa import DeepPartitionAggregation, partition
from backdoorlab.certify.knn import vote_tolerance


def _brute_radius(votes, depth=3):
    """Fewest single-vote moves (one insertion/deletion changes one member's vote) that change the winner."""
    K = len(votes)
    base = max(range(K), key=lambda c: (votes[c], -c))
    frontier = [tuple(votes)]
    for level in range(1, depth + 1):
        nxt = []
        for v in frontier:
            for a, b in itertools.permutations(range(K), 2):
                if v[a] == 0:
                    continue
                w = list(v)
                w[a] -= 1
                w[b] += 1
                if max(range(K), key=lambda c: (w[c], -c)) != base:
                    return level - 1
                nxt.append(tuple(w))
        frontier = list(set(nxt))
    return depth


@pytest.mark.parametrize("votes", [[5, 3, 0], [3, 5, 0], [4, 4, 0], [0, 4, 4], [6, 1, 1], [2, 6, 2], [7, 0, 0], [3, 3, 2]])
def test_radius_is_half_the_gap_with_the_tie_rule(votes):
    pred, rho = vote_tolerance(torch.tensor([votes]), 2)
    assert int(pred) == max(range(3), key=lambda c: (votes[c], -c))
    assert int(rho) == min(_brute_radius(votes), 3) or int(rho) >= 3


def test_partitions_depend_on_content_only(digits):
    train, _ = digits
    part, key = partition(train.x, 7)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    part2, key2 = partition(train.x[perm], 7)
    assert torch.equal(part[perm], part2) and torch.equal(key[perm], key2)
    expected = ((train.x.flatten(1) * 255).round().long().sum(1)) % 7
    assert torch.equal(part, expected)


@pytest.mark.parametrize("shift", [0, 2])
def test_together_equals_sequential_and_one_poison_moves_at_most_one_member(digits, shift):
    train, test = digits
    kw = dict(partitions=8, steps=25, batch_size=8, width=4, shift=shift)
    x, y = train.x, train.y
    tog = DeepPartitionAggregation(**kw).train(x, y, num_classes=10)
    seq = DeepPartitionAggregation(**kw, mode="sequential").train(x, y, num_classes=10)
    pt, ps = tog.member_predictions(test.x), seq.member_predictions(test.x)
    assert (pt != ps).float().mean() < 0.01          # same arithmetic, round-off only
    # order of the dataset does not matter (content hash + content sort + fixed streams)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    again = DeepPartitionAggregation(**kw).train(x[perm], y[perm], num_classes=10)
    assert torch.equal(again.member_predictions(test.x), pt)
    # insert one poisoned sample: only its partition's member may change
    xp = torch.cat([x, torch.ones(1, *x.shape[1:])])
    yp = torch.cat([y, torch.tensor([3])])
    hit = int(partition(xp[-1:], 8)[0])
    poisoned = DeepPartitionAggregation(**kw).train(xp, yp, num_classes=10)
    changed = (poisoned.member_predictions(test.x) != pt).any(1)
    assert not changed[torch.arange(8) != hit].any()
    cert = DeepPartitionAggregation(**kw).certify(x, y, test.x, ensemble=tog)
    cert_p = DeepPartitionAggregation(**kw).certify(xp, yp, test.x, ensemble=poisoned)
    safe = cert.tolerance >= 1
    assert torch.equal(cert.prediction[safe], cert_p.prediction[safe])


def test_shift_translates_each_sample_with_zero_fill():
    from backdoorlab.certify.dpa import _shifted

    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = _shifted(x, torch.tensor([[1, 0], [0, -2]]))
    assert torch.equal(out[0, 0, 1:], x[0, 0, :3]) and bool((out[0, 0, 0] == 0).all())
    assert torch.equal(out[1, 0, :, :2], x[1, 0, :, 2:]) and bool((out[1, 0, :, 2:] == 0).all())


def test_invalid_fields():
    with pytest.raises(ValueError, match="DeepPartitionAggregation.partitions"):
        DeepPartitionAggregation(partitions=0)
    with pytest.raises(ValueError, match="DeepPartitionAggregation.mode"):
        DeepPartitionAggregation(mode="parallel")
    with pytest.raises(ValueError, match="DeepPartitionAggregation.shift"):
        DeepPartitionAggregation(shift=-1)
