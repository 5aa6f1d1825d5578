"""Randomized smoothing: soundness against the exact radius of a linear binary classifier."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backdoorlab.certify.smoothing import (ABSTAIN, RandomizedSmoothing, patch_certified_fraction,
                                            train_with_noise, trigger_norms, worst_patch_norms)
from backdoorlab.triggers import PatchTrigger


class Linear2(nn.Module):
    """f(x) = 1[<w, x> + b > 0] as two logits; its smoothed classifier's exact radius is |<w,x>+b| / ||w||."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = nn.Parameter(w.clone()), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([-s, s], 1)


def _setup(seed=0, m=40):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    model = Linear2(w, 0.0)
    x = torch.rand(m, 1, 2, 2, generator=g)
    model.b.data = -(x.flatten(1) @ w).median()           # put the hyperplane through the data
    dist = ((x.flatten(1) @ w + model.b.data).abs() / w.norm()).detach()
    return model, x, dist


def test_radius_never_exceeds_exact_distance_and_approaches_it():
    model, x, dist = _setup()
    sigma = 0.25
    gaps = {}
    for n in (1_000, 50_000):
        cert = RandomizedSmoothing(sigma=sigma, n0=100, n=n, alpha=0.01, batch_size=25_000).certify(
            model, x, generator=torch.Generator().manual_seed(n))
        ok = cert.prediction != ABSTAIN
        # soundness: violations only at the alpha failure rate (expected 0.4 of 40; P[> 3] < 0.001)
        assert int((cert.radius[ok] > dist[ok] + 1e-6).sum()) <= 3
        # the prediction is the true side of the hyperplane wherever it certifies
        side = (x.flatten(1) @ model.w + model.b > 0).long()
        assert torch.equal(cert.prediction[ok], side[ok])
        inside = ok & (dist > 0.2 * sigma) & (dist < 2 * sigma)
        gaps[n] = float((dist - cert.radius)[inside].mean() / sigma)
    assert gaps[50_000] < gaps[1_000]
    assert gaps[50_000] < 0.08


def test_predict_abstains_on_the_hyperplane_and_answers_far_from_it():
    w = torch.tensor([1.0, -1.0, 0.5, 0.0])
    on, far = torch.full((1, 1, 2, 2), 0.5), torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    model = Linear2(w, -float(on.flatten() @ w))                # <w, on> + b = 0
    pred = RandomizedSmoothing(sigma=0.1, n=2000, alpha=0.001).predict(
        model, torch.cat([on, far]), generator=torch.Generator().manual_seed(0))
    assert pred.tolist() == [ABSTAIN, 1]


def test_patch_norms_and_backdoor_reading():
    x = torch.zeros(3, 1, 8, 8)
    trig = PatchTrigger.square((1, 8, 8), 3, "bottom-right", margin=0)
    assert torch.allclose(trigger_norms(x, trig), torch.full((3,), 3.0))
    assert torch.allclose(worst_patch_norms(x, 3), torch.full((3,), 3.0))
    assert torch.allclose(worst_patch_norms(torch.full((1, 3, 8, 8), 0.5), 2), torch.tensor([math.sqrt(3 * 4 * 0.25)]))
    from backdoorlab.certify.smoothing import RobustnessCertificate

    cert = RobustnessCertificate(torch.tensor([1, 1, ABSTAIN]), torch.tensor([3.5, 2.0, 0.0]),
                                 torch.tensor([0.9, 0.8, 0.4]), 1.0, 0.001, 100)
    out = patch_certified_fraction(cert, x, 3, trig)
    assert out["certified_trigger"] == pytest.approx(1 / 3)
    assert out["max_patch_norm"] == 3.0
    assert cert.certified_accuracy(torch.tensor([1, 0, 1]), 0.0) == pytest.approx(1 / 3)


def test_invalid_fields_name_the_parameter():
    with pytest.raises(ValueError, match="RandomizedSmoothing.sigma"):
        RandomizedSmoothing(sigma=0)
    with pytest.raises(ValueError, match="RandomizedSmoothing.alpha"):
        RandomizedSmoothing(alpha=1.5)


def test_noise_training_then_certify_on_digits(digits):
    from backdoorlab.models import build
    from backdoorlab.training import init_weights

    train, test = digits
    info = train.info
    model = init_weights(build("mlp", input_shape=info.input_shape, num_classes=10, hidden=[64], mean=info.mean,
                               std=info.std), torch.Generator().manual_seed(0))
    train_with_noise(model, train, sigma=0.25, generator=torch.Generator().manual_seed(0), epochs=10,
                     batch_size=64, lr=0.05)
    before = [p.clone() for p in model.parameters()]
    cert = RandomizedSmoothing(sigma=0.25, n0=50, n=300, alpha=0.001).certify(
        model, test.x[:60], generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert cert.certified_accuracy(test.y[:60], 0.0) > 0.7
    assert cert.certified_accuracy(test.y[:60], 0.25) <= cert.certified_accuracy(test.y[:60], 0.0)
