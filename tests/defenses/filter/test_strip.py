"""STRIP: the vectorised score equals a literal transcription of eqs. 2-3; entropy extremes; one
forward per batch; the planted backdoor is separated from clean inputs."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backdoorlab._stats import auroc
from backdoorlab.data import as_tensors
from backdoorlab.defenses.filter import Guard
from backdoorlab.defenses.filter.strip import Strip


class Linear(nn.Module):
    def __init__(self, d: int, k: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(d, k, generator=g) * 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.flatten(1) @ self.w


def slow_entropy(model, x, pool, n, seed, superimpose, alpha=0.5):
    """Eqs. 2-3 one input and one overlay at a time."""
    idx = torch.randint(0, len(pool), (len(x), n), generator=torch.Generator().manual_seed(seed))
    out = []
    model = model.requires_grad_(False)
    for i in range(len(x)):
        hs = []
        for j in range(n):
            b = pool[idx[i, j]]
            xp = {"sum": x[i] + b, "add": (x[i] + b).clamp(0, 1), "blend": (1 - alpha) * x[i] + alpha * b}[superimpose]
            p = torch.softmax(model(xp.unsqueeze(0))[0].double(), 0)
            hs.append(-sum(float(pk) * math.log2(float(pk)) for pk in p if pk > 0))
        out.append(sum(hs) / n)
    return torch.tensor(out)


@pytest.mark.parametrize("superimpose", ["sum", "add", "blend"])
def test_matches_literal_transcription(superimpose):
    g = torch.Generator().manual_seed(1)
    x, pool = torch.rand(5, 1, 4, 4, generator=g), torch.rand(7, 1, 4, 4, generator=g)
    model = Linear(16, 3)
    f = Strip(n_overlays=6, superimpose=superimpose, seed=4)
    got = f.score(model, x, pool)
    assert torch.allclose(-got.double(), slow_entropy(model, x, pool, 6, 4, superimpose).double(), atol=1e-5)
    # chunking the batch (2 inputs per forward) changes nothing
    assert torch.allclose(Strip(n_overlays=6, superimpose=superimpose, seed=4, max_forward=12).score(model, x, pool), got)


def test_entropy_extremes_and_one_forward():
    x, pool = torch.rand(8, 1, 2, 2), torch.rand(10, 1, 2, 2)
    uniform = Linear(4, 5)
    with torch.no_grad():
        uniform.w.zero_()
    # all logits equal -> H = log2(K) for every overlay
    assert torch.allclose(Strip(n_overlays=3).entropy(uniform, x, pool), torch.full((8,), math.log2(5)))
    uniform.calls = 0
    Strip(n_overlays=10).score(uniform, x, pool)
    assert uniform.calls == 1  # all 8 x 10 overlays in one forward pass


def test_validation():
    with pytest.raises(ValueError, match="n_overlays"):
        Strip(n_overlays=0)
    with pytest.raises(ValueError, match="superimpose"):
        Strip(superimpose="max")
    with pytest.raises(ValueError, match="clean_pool"):
        Strip().score(Linear(4, 2), torch.rand(2, 1, 2, 2), torch.rand(3, 1, 3, 3))


def test_separates_badnets_digits(badnets, digits):
    """The trigger survives superimposition: stamped inputs keep a near-zero entropy."""
    model, goal, _ = badnets
    train, test = digits
    xtr, _ = as_tensors(train)
    xte, yte = as_tensors(test)
    f = Strip(n_overlays=16)
    guard = Guard.calibrate(f, model, xtr[:400], fpr=0.05)
    clean, stamped = guard.scores(xte), guard.scores(goal.apply(xte[yte != goal.target]))
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(stamped))])
    assert auroc(torch.cat([clean, stamped]), labels) > 0.98
    assert float((stamped <= guard.threshold).float().mean()) <= 0.02  # FAR at FRR 5%
