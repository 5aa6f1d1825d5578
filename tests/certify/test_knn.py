"""Certified kNN / rNN: the closed-form tolerance against brute force over every poisoning of size <= 2."""
from __future__ import annotations

import itertools

import pytest
import torch

from backdoorlab.certify.knn import ABSTAIN, CertifiedKNN, CertifiedRNN, vote_tolerance

C = 3


def knn_predict(points, k):
    """points: list of (distance, label); plurality of the k nearest, ties to the smaller label."""
    near = sorted(points)[:k]
    votes = [sum(1 for _, lab in near if lab == c) for c in range(C)]
    return max(range(C), key=lambda c: (votes[c], -c))


def rnn_predict(points, r):
    votes = [sum(1 for d, lab in points if d <= r and lab == c) for c in range(C)]
    if sum(votes) == 0:
        return ABSTAIN
    return max(range(C), key=lambda c: (votes[c], -c))


def slots(points):
    """Insertion distances: two per gap between the sorted distances (ties never needed)."""
    ds = sorted({0.0} | {d for d, _ in points})
    ds.append(ds[-1] + 3.0)
    return [a + f * (b - a) for a, b in zip(ds, ds[1:]) for f in (1 / 3, 2 / 3)]


def neighbours(points, modify: bool):
    """Every dataset one operation away: delete one, insert one anywhere, or (modify) both at once."""
    inserts = [(d, c) for d in slots(points) for c in range(C)]
    for i in range(len(points)):
        rest = points[:i] + points[i + 1:]
        yield rest
        if modify:
            for p in inserts:
                yield rest + [p]
    for p in inserts:
        yield points + [p]


def brute_min_ops(points, predict, depth, modify=True):
    """Smallest number of operations (<= depth) that changes the prediction, else depth + 1."""
    base = predict(points)
    frontier = [points]
    for level in range(1, depth + 1):
        nxt = []
        for ds in frontier:
            for nb in neighbours(ds, modify):
                if predict(nb) != base:
                    return level
                nxt.append(nb)
        frontier = nxt
    return depth + 1


def _instance(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(n, generator=g) * 10 + 0.5).tolist()
    lab = torch.randint(0, C, (n,), generator=g).tolist()
    # make the majority class 0 or 1 more often, so e* > 0 happens
    lab = [0 if torch.rand(1, generator=g) < 0.5 else c for c in lab]
    return list(zip(d, lab))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [3, 5])
def test_knn_tolerance_matches_brute_force(seed, k):
    pts = _instance(seed)
    x = torch.tensor([[d] for d, _ in pts])
    y = torch.tensor([c for _, c in pts])
    cert = CertifiedKNN(k=min(k, len(pts))).certify(x, y, torch.zeros(1, 1), num_classes=C)
    kk = min(k, len(pts))
    pred = knn_predict(pts, kk)
    assert int(cert.prediction) == pred
    e = int(cert.tolerance)
    need = brute_min_ops(pts, lambda p: knn_predict(p, kk), depth=min(e + 1, 2))
    assert need > min(e, 2)              # sound: nothing of size <= e* changes the prediction
    if e + 1 <= 2:
        assert need == e + 1             # tight: relabelling e* + 1 neighbours succeeds


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("unit", ["operations", "insert-delete"])
def test_rnn_tolerance_matches_brute_force(seed, unit):
    pts = _instance(seed + 100)
    r = 6.0
    x = torch.tensor([[d] for d, _ in pts])
    y = torch.tensor([c for _, c in pts])
    cert = CertifiedRNN(r=r, unit=unit).certify(x, y, torch.zeros(1, 1), num_classes=C)
    pred = rnn_predict(pts, r)
    assert int(cert.prediction) == pred
    e = int(cert.tolerance)
    if pred == ABSTAIN:
        assert e == -1
        return
    need = brute_min_ops(pts, lambda p: rnn_predict(p, r), depth=min(e + 1, 2), modify=unit == "operations")
    assert need > min(e, 2)
    if e + 1 <= 2:
        assert need == e + 1


def test_vote_tolerance_hand_computed():
    pred, tol = vote_tolerance(torch.tensor([[5, 3, 0], [3, 5, 0], [4, 4, 0], [4, 0, 4], [0, 0, 0]]))
    assert pred.tolist() == [0, 1, 0, 0, 0]
    assert tol.tolist() == [1, 0, 0, 0, 0]
    _, tol1 = vote_tolerance(torch.tensor([[5, 3, 0], [3, 5, 0]]), per_operation=1)
    assert tol1.tolist() == [2, 1]


def test_batched_distances_on_digits(digits):
    train, test = digits
    cert = CertifiedKNN(k=25, batch_size=64).certify(train.x, train.y, test.x[:200])
    # brute force: the same votes from a plain full sort
    d = torch.cdist(test.x[:200].flatten(1), train.x.flatten(1))
    idx = torch.sort(d, dim=1, stable=True).indices[:, :25]
    votes = torch.nn.functional.one_hot(train.y[idx], 10).sum(1)
    assert torch.equal(cert.votes, votes)
    assert cert.certified_accuracy(test.y[:200], 0) > 0.9
    curve = cert.curve(test.y[:200], [0, 3, 6, 13])
    assert [a for _, a in curve] == sorted([a for _, a in curve], reverse=True)
    assert curve[-1][1] == 0.0           # k = 25 can never tolerate 13 operations


def test_invalid_fields():
    with pytest.raises(ValueError, match="CertifiedKNN.k"):
        CertifiedKNN(k=0)
    with pytest.raises(ValueError, match="CertifiedRNN.unit"):
        CertifiedRNN(unit="swap")


def test_certify_many_equals_one_k_at_a_time():
    g = torch.Generator().manual_seed(3)
    tx, ty = torch.randn(120, 4, generator=g), torch.randint(0, 3, (120,), generator=g)
    x = torch.randn(15, 4, generator=g)
    many = CertifiedKNN(k=1, batch_size=4).certify_many(tx, ty, x, [1, 7, 30])
    for k in (1, 7, 30):
        one = CertifiedKNN(k=k).certify(tx, ty, x)
        assert torch.equal(many[k].votes, one.votes) and torch.equal(many[k].tolerance, one.tolerance)


def test_rnn_joint_curve_by_hand():
    from backdoorlab.certify.knn import PoisoningCertificate, rnn_joint_curve, vote_tolerance

    # three test inputs: 0 and 1 far apart (> 2r), 2 close to 0; votes give needs 3, 5, 2 (all correct)
    x = torch.tensor([[0.0], [10.0], [0.5]])
    votes = torch.tensor([[5, 2, 0], [6, 1, 0], [3, 1, 0]])  # need = s_a - s_b + 1[b > a] = 4, 6, 3
    pred, tol = vote_tolerance(votes, 2)
    assert pred.tolist() == [0, 0, 0] and tol.tolist() == [1, 2, 1]   # floor(gap / 2), gaps 3, 5, 2
    cert = PoisoningCertificate(pred, tol, votes, "operations")
    y = torch.zeros(3, dtype=torch.long)
    # groups by greedy colouring at r = 1 (2r = 2): {0, 1} and {2}
    curve = dict(rnn_joint_curve(cert, x, y, 1.0, [0, 1, 2, 3, 5], unit="operations"))
    # e=1: 2 votes per group: nothing flips (needs 4, 6 | 3); e=2: 4 votes flip input 0 and input 2
    # e=3: 6 votes: group {0,1} flips 0 (4 <= 6, 4 + 6 > 6), group {2} flips 2; e=5: 10 votes flip all
    assert curve == {0: 1.0, 1: 1.0, 2: pytest.approx(1 / 3), 3: pytest.approx(1 / 3), 5: 0.0}
    # the individual certificates (tolerances 1, 2, 1): the joint one never does worse, and is better at e=3
    individual = {e: cert.certified_accuracy(y, e) for e in (1, 2, 3)}
    assert individual == {1: 1.0, 2: pytest.approx(1 / 3), 3: 0.0}
    assert all(curve[e] >= individual[e] - 1e-6 for e in individual)   # float32 accuracies
    ins = dict(rnn_joint_curve(cert, x, y, 1.0, [3, 4], unit="insert-delete"))
    assert ins == {3: pytest.approx(2 / 3), 4: pytest.approx(1 / 3)}


def test_one_shared_distance_pass_equals_separate_certifiers():
    """neighbour_votes: every k and r from one distance pass (small batches) gives exactly the votes of
    the definition and the certificates / certified accuracies of one certify() call per certifier."""
    from backdoorlab.certify.knn import neighbour_votes, pairwise_distances, rnn_joint_curve

    g = torch.Generator().manual_seed(5)
    tx = torch.randint(0, 21, (150, 4), generator=g).float()   # integer coordinates: exact distances
    ty = torch.randint(0, C, (150,), generator=g)
    x = torch.randint(0, 21, (23, 4), generator=g).float()
    y = torch.randint(0, C, (23,), generator=g)
    ks, rs = [1, 5, 20, 60], [4.0, 7.5, 12.0]
    knn, rnn = neighbour_votes(tx, ty, x, ks=ks, rs=rs, num_classes=C, batch_size=4)
    d2 = ((x[:, None] - tx[None]) ** 2).sum(-1)
    order = torch.argsort(d2, dim=1, stable=True)             # (distance, training index) order
    sizes = range(0, 32)
    for k in ks:
        expected = torch.stack([torch.bincount(ty[row[:k]], minlength=C) for row in order])
        assert torch.equal(knn[k], expected)
        shared, alone = CertifiedKNN.from_votes(knn[k]), CertifiedKNN(k=k).certify(tx, ty, x, num_classes=C)
        assert torch.equal(shared.prediction, alone.prediction) and torch.equal(shared.tolerance, alone.tolerance)
        assert shared.curve(y, sizes) == alone.curve(y, sizes)
    dists = pairwise_distances(x)
    for r in rs:
        assert torch.equal(rnn[r], torch.stack([torch.bincount(ty[row <= r * r], minlength=C) for row in d2]))
        for unit in ("operations", "insert-delete"):
            shared = CertifiedRNN(r=r, unit=unit).from_votes(rnn[r])
            alone = CertifiedRNN(r=r, unit=unit).certify(tx, ty, x, num_classes=C)
            assert torch.equal(shared.prediction, alone.prediction) and torch.equal(shared.tolerance, alone.tolerance)
            assert shared.curve(y, sizes) == alone.curve(y, sizes)
            assert rnn_joint_curve(shared, x, y, r, sizes, unit, dists=dists) == rnn_joint_curve(alone, x, y, r, sizes, unit)
    with pytest.raises(ValueError, match="rnn_joint_curve dists"):
        rnn_joint_curve(shared, x, y, 4.0, sizes, dists=dists[:3])


def test_neighbour_votes_needs_a_k_or_a_radius():
    from backdoorlab.certify.knn import neighbour_votes

    x = torch.rand(6, 3)
    with pytest.raises(ValueError, match="at least one k"):
        neighbour_votes(x, torch.tensor([0, 1, 0, 1, 0, 1]), x[:2])
