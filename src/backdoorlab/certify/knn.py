"""Intrinsic certified robustness of k-nearest and radius-nearest neighbours against data poisoning
(Jia, Liu, Cao, Gong, AAAI 2022, "Certified robustness of nearest neighbors against data poisoning
and backdoor attacks"; the seed 000 reading: MNIST ~70% certified at 500 poisoned samples).

Threat model: the attacker inserts, deletes or modifies up to e training samples (features and
labels, backdoor triggers included); the test input is fixed.

    s_c      = number of votes for class c among the neighbours of x (k nearest, or all within r)
    a        = argmax_c s_c, ties to the smaller label (the prediction)
    (kNN)    one insertion, deletion or modification swaps at most one neighbour, so it lowers
             s_a - s_b by at most 2:  e* = min_{b != a} floor((s_a - s_b - 1[b < a]) / 2)
    (rNN)    insertion or deletion changes one count, a modification two:
             unit "operations": e* = min_b floor((s_a - s_b - 1[b < a]) / 2)
             unit "insert-delete": e* = min_b (s_a - s_b - 1[b < a]); and e* <= s_a - 1 (an empty
             ball abstains)
    certified accuracy at e = fraction of test inputs predicted correctly with e* >= e.

Deviations: raw pixels as features by default (the paper's feature space was not verified here; any map
the attacker cannot influence, e.g. an encoder trained on other clean data, keeps the certificate valid); distance ties at the k-th neighbour are broken
by training index among the k + 16 closest; rNN abstains (-1, not certified) on an empty ball.
Distances are one matrix product per test batch against the whole training set; ``neighbour_votes``
derives every k and r asked for from that one pass (several certifiers over the same inputs share it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import one_of, positive
from ..roles import Certifier, Progress

ABSTAIN = -1


@dataclass(frozen=True)
class PoisoningCertificate:
    """Per test input: ``prediction`` (-1 = abstain) and ``tolerance`` e*: the prediction provably
    stays the same under any poisoning of at most e* training samples counted in ``unit``
    (-1 when abstaining).  ``votes`` are the per-class counts the certificate was computed from."""

    prediction: torch.Tensor
    tolerance: torch.Tensor
    votes: torch.Tensor
    unit: str

    def certified_accuracy(self, y: torch.Tensor, e: int) -> float:
        ok = (self.prediction == y) & (self.tolerance >= e) & (self.prediction != ABSTAIN)
        return float(ok.float().mean())

    def curve(self, y: torch.Tensor, sizes) -> list[tuple[int, float]]:
        return [(int(e), self.certified_accuracy(y, int(e))) for e in sizes]

    def median_tolerance(self, y: torch.Tensor) -> int:
        """Largest e at which at least half of the inputs are certified correct (DPA's summary)."""
        t = torch.where(self.prediction == y, self.tolerance, torch.full_like(self.tolerance, -1))
        return int(t.sort(descending=True).values[(len(t) - 1) // 2])

    def to_json(self) -> dict:
        return {"unit": self.unit, "prediction": self.prediction.tolist(), "tolerance": self.tolerance.tolist()}


def vote_tolerance(votes: torch.Tensor, per_operation: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, e*) from (N, K) vote counts: plurality with ties to the smaller label, and the
    number of operations that each move at most ``per_operation`` votes the prediction survives."""
    votes = votes.long()
    a = votes.argmax(1)  # first maximum = smaller label on ties
    k = votes.shape[1]
    s_a = votes.gather(1, a[:, None])
    rival = votes + (torch.arange(k)[None] < a[:, None]).long()
    rival.scatter_(1, a[:, None], torch.full_like(s_a, -(2**40)))
    gap = (s_a - rival).amin(1) if k > 1 else s_a.squeeze(1)
    return a, torch.div(gap, per_operation, rounding_mode="floor")


def _sq_dists(xb: torch.Tensor, train: torch.Tensor, train_sq: torch.Tensor) -> torch.Tensor:
    return (xb.pow(2).sum(1, keepdim=True) + train_sq[None] - 2 * xb @ train.T).clamp_min_(0)


def neighbour_votes(train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, *, ks=(), rs=(),
                    num_classes: int | None = None, batch_size: int = 256,
                    progress: Progress = None) -> tuple[dict[int, torch.Tensor], dict[float, torch.Tensor]]:
    """Per-class vote counts (N, K) of the k nearest training points for every k in ``ks`` and of the
    radius-r ball for every r in ``rs``, from ONE pass of distances (one matrix product per batch of
    ``batch_size`` inputs): several certifiers over the same features and inputs share it.  Returns
    ``({k: votes}, {r: votes})``; ``CertifiedKNN.from_votes`` / ``CertifiedRNN.from_votes`` turn the
    votes into certificates (equal to their ``certify`` at the same ``batch_size``).  The k nearest
    under the (distance, index) order are a prefix of the max(ks) nearest, so one ranking serves every k."""
    if not len(ks) and not len(rs):
        raise ValueError("neighbour_votes needs at least one k (ks=) or one radius (rs=); got neither.")
    owner = "CertifiedKNN" if ks else "CertifiedRNN"
    tx, ty, num_classes = _prepare(train_x, train_y, num_classes, owner)
    ks = sorted({int(k) for k in ks})
    rs = sorted({float(r) for r in rs})
    if ks and (ks[0] < 1 or ks[-1] > len(tx)):
        raise ValueError(f"CertifiedKNN.k must be in 1..{len(tx)} (the training-set size); got {ks}.")
    if rs and rs[0] <= 0:
        raise ValueError(f"CertifiedRNN.r must be > 0 (a ball radius); got {rs}.")
    kmax = ks[-1] if ks else 0
    tsq = tx.pow(2).sum(1)
    onehot = torch.nn.functional.one_hot(ty, num_classes).to(tx.dtype) if rs else None
    xf = x.flatten(1).float().cpu()
    knn = {k: torch.zeros(len(xf), num_classes, dtype=torch.long) for k in ks}
    rnn = {r: torch.zeros(len(xf), num_classes, dtype=torch.long) for r in rs}
    extra = min(16, len(tx) - kmax)
    for i in range(0, len(xf), batch_size):
        d = _sq_dists(xf[i:i + batch_size], tx, tsq)
        if ks:
            dist, idx = d.topk(kmax + extra, dim=1, largest=False, sorted=True)
            # deterministic ties: order by (distance, index) among the kmax + extra closest
            order = torch.argsort(idx, dim=1)
            dist_o, idx_o = dist.gather(1, order), idx.gather(1, order)
            ranked = ty[idx_o.gather(1, torch.argsort(dist_o, dim=1, stable=True)[:, :kmax])]
            for k in ks:
                knn[k][i:i + len(d)] = torch.zeros(len(d), num_classes, dtype=torch.long).scatter_add_(
                    1, ranked[:, :k], torch.ones_like(ranked[:, :k]))
        for r in rs:
            rnn[r][i:i + len(d)] = ((d <= r ** 2).to(tx.dtype) @ onehot).round().long()
        if progress is not None:
            progress(min(i + batch_size, len(xf)), len(xf))
    return knn, rnn


@dataclass(frozen=True, kw_only=True)
class CertifiedKNN(Certifier):
    """k = number of neighbours (the paper's k); batch_size = test inputs per distance batch."""

    k: int = 5000
    batch_size: int = 256

    def __post_init__(self) -> None:
        positive("CertifiedKNN", "k", self.k, integer=True)
        positive("CertifiedKNN", "batch_size", self.batch_size, integer=True)

    def certify(self, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, *,
                num_classes: int | None = None, progress: Progress = None) -> PoisoningCertificate:
        return self.certify_many(train_x, train_y, x, [self.k], num_classes=num_classes, progress=progress)[self.k]

    def certify_many(self, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, ks, *,
                     num_classes: int | None = None, progress: Progress = None) -> dict[int, PoisoningCertificate]:
        """Certificates for several k from one neighbour ranking (each equals ``CertifiedKNN(k=k).certify``:
        the k nearest under the (distance, index) order are a prefix of the max(ks) nearest)."""
        knn, _ = neighbour_votes(train_x, train_y, x, ks=ks, num_classes=num_classes,
                                 batch_size=self.batch_size, progress=progress)
        return {k: self.from_votes(v) for k, v in knn.items()}

    @staticmethod
    def from_votes(votes: torch.Tensor) -> PoisoningCertificate:
        """The certificate of the k nearest neighbours' (N, K) vote counts (from ``neighbour_votes``)."""
        pred, tol = vote_tolerance(votes, 2)
        return PoisoningCertificate(pred, tol, votes, "operations (insert/delete/modify one sample)")


@dataclass(frozen=True, kw_only=True)
class CertifiedRNN(Certifier):
    """r = radius of the L2 ball (the paper's r); unit = "operations" (a modification counts 1) or
    "insert-delete" (a modification counts 2); batch_size = test inputs per distance batch."""

    r: float = 4.0
    unit: str = "operations"
    batch_size: int = 256

    def __post_init__(self) -> None:
        positive("CertifiedRNN", "r", self.r)
        one_of("CertifiedRNN", "unit", self.unit, {"operations", "insert-delete"})
        positive("CertifiedRNN", "batch_size", self.batch_size, integer=True)

    def certify(self, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, *,
                num_classes: int | None = None, progress: Progress = None) -> PoisoningCertificate:
        _, rnn = neighbour_votes(train_x, train_y, x, rs=[self.r], num_classes=num_classes,
                                 batch_size=self.batch_size, progress=progress)
        return self.from_votes(rnn[float(self.r)])

    def from_votes(self, votes: torch.Tensor) -> PoisoningCertificate:
        """The certificate (in ``self.unit``) of the radius-r ball's (N, K) vote counts (from
        ``neighbour_votes``; ``self.r`` is not used: the votes carry the radius)."""
        pred, tol = vote_tolerance(votes, 2 if self.unit == "operations" else 1)
        empty = votes.sum(1) == 0
        s_a = votes.gather(1, pred[:, None]).squeeze(1)
        tol = torch.minimum(tol, s_a - 1)
        pred = torch.where(empty, torch.full_like(pred, ABSTAIN), pred)
        tol = torch.where(empty, torch.full_like(tol, -1), tol)
        unit = ("operations (insert/delete/modify one sample)" if self.unit == "operations"
                else "insertions/deletions (a modification counts 2)")
        return PoisoningCertificate(pred, tol, votes, unit)


def rnn_joint_curve(cert: PoisoningCertificate, x: torch.Tensor, y: torch.Tensor, r: float, sizes,
                    unit: str = "operations", *, dists: torch.Tensor | None = None) -> list[tuple[int, float]]:
    """Joint (group) certificate of rNN (Jia et al.'s idea, our sound simple form): a lower bound on
    the fraction of ``x`` that stay correct *simultaneously* under e poisoning operations.

    A training point can vote for test input i only if it lies within r of x_i, so inputs more than 2r
    apart never share a poisoned point.  The inputs are split into groups of pairwise > 2r apart
    (greedy colouring of the "within 2r" graph).  Inside a group one insertion or deletion moves one
    vote of one input and a modification two (one per input at most), so e operations move at most
    2e votes in a group ("operations"; e with unit "insert-delete").  Flipping input i costs
    need_i = min(min_b (s_a - s_b + 1[b > a]), s_a) votes (s_a deletions empty the ball: abstain);
    the attacker flips at most the cheapest correct inputs whose needs fit the budget, per group.
    ``dists``: the inputs' pairwise distances ``pairwise_distances(x)``, to share one matrix among calls
    (several r and units over the same ``x``); computed here when None."""
    votes = cert.votes.long()
    pred = cert.prediction
    correct = (pred == y) & (pred != ABSTAIN)
    a = pred.clamp_min(0)
    s_a = votes.gather(1, a[:, None]).squeeze(1)
    K = votes.shape[1]
    bonus = (torch.arange(K)[None] > a[:, None]).long()
    need = (s_a[:, None] - votes + bonus)
    need.scatter_(1, a[:, None], torch.full_like(s_a[:, None], 2**40))
    need = torch.minimum(need.amin(1), s_a)
    if dists is None:
        dists = pairwise_distances(x)
    if dists.shape != (len(x), len(x)):
        raise ValueError(f"rnn_joint_curve dists must be pairwise_distances(x), shape {(len(x), len(x))}; "
                         f"got {tuple(dists.shape)}.")
    close = dists <= 2 * r
    colour = torch.full((len(x),), -1, dtype=torch.long)
    for i in range(len(x)):                                    # greedy colouring, index order
        used = set(colour[close[i] & (colour >= 0)].tolist())
        c = 0
        while c in used:
            c += 1
        colour[i] = c
    per = 2 if unit == "operations" else 1
    out = []
    for e in sizes:
        flipped = 0
        for c in range(int(colour.max()) + 1):
            costs = need[(colour == c) & correct].sort().values
            flipped += int((costs.cumsum(0) <= per * int(e)).sum())
        out.append((int(e), float((int(correct.sum()) - flipped) / len(x))))
    return out


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise L2 distances (N, N) of the inputs (float64), as ``rnn_joint_curve`` uses them."""
    xf = x.flatten(1).double()
    return torch.cdist(xf, xf)


def _prepare(train_x, train_y, num_classes, owner):
    if not isinstance(train_x, torch.Tensor) or not isinstance(train_y, torch.Tensor):
        raise TypeError(f"{owner}.certify needs tensors train_x, train_y, x.")
    if len(train_x) != len(train_y) or len(train_x) == 0:
        raise ValueError(f"{owner}.certify train_x and train_y must be non-empty and equally long; "
                         f"got {len(train_x)} and {len(train_y)}.")
    ty = train_y.long().cpu()
    k = int(num_classes or int(ty.max()) + 1)
    return train_x.flatten(1).float().cpu(), ty, k


__all__ = ["CertifiedKNN", "CertifiedRNN", "PoisoningCertificate", "vote_tolerance", "neighbour_votes",
           "rnn_joint_curve", "pairwise_distances", "ABSTAIN"]
