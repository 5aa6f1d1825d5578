"""Februus: Grad-CAM finds the planted trigger; purification only changes the removed region and
moves it back towards the clean image; ASR falls.  Autoencoder: beats the mean-image baseline."""
from __future__ import annotations

import pytest
import torch

from backdoorlab._torch import predict
from backdoorlab.data import as_tensors
from backdoorlab.defenses.filter.autoencoder import AutoencoderPurifier
from backdoorlab.defenses.filter.februus import Februus, grad_cam, random_holes
from backdoorlab.models import build


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def setting(badnets, digits):
    model, goal, _ = badnets
    train, test = digits
    xtr, _ = as_tensors(train)
    xte, yte = as_tensors(test)
    keep = yte != goal.target
    return model, goal, xtr[torch.randperm(len(xtr), generator=gen(0))[:600]], xte[keep]


def test_grad_cam_points_at_the_trigger(setting):
    model, goal, _, x = setting
    cam = grad_cam(model, goal.apply(x))
    assert cam.shape == (len(x), 1, 8, 8) and float(cam.min()) >= 0
    assert torch.allclose(cam.amax((2, 3)), torch.ones(len(x), 1))  # normalised by its maximum
    inside = goal.trigger.mask.bool().expand(1, 8, 8)
    assert float(cam[:, inside].mean()) > 2 * float(cam[:, ~inside].mean())


def test_random_holes_are_rectangles():
    m = random_holes((50, 1, 10, 10), 0.4, gen(1))
    rows, cols = m.amax(3).sum(2).flatten(), m.amax(2).sum(2).flatten()
    assert torch.equal(m.sum((1, 2, 3)), rows * cols)  # a filled rectangle
    assert int(rows.min()) >= 1 and int(rows.max()) <= 4 and int(cols.max()) <= 4


def test_februus_purifies_the_trigger(setting):
    model, goal, clean, x = setting
    fitted = Februus(epochs=8, cam_threshold=0.4).fit(model, clean, generator=gen(2))
    stamped = goal.apply(x)
    restored, mask = fitted.purify_with_mask(model, stamped)
    assert torch.equal(restored * (1 - mask), stamped * (1 - mask))  # outside the hole: untouched
    inside = goal.trigger.mask.bool().expand(1, 8, 8)
    err_before = float((stamped - x)[:, inside].abs().mean())  # the trigger's distance to the clean image
    err_after = float((restored - x)[:, inside].abs().mean())
    assert err_after < 0.6 * err_before
    asr = float((predict(model, restored) == goal.target).float().mean())
    assert asr <= 0.2  # was 100%


def test_februus_needs_a_conv_model(digits):
    info = digits[0].info
    mlp = build("mlp", input_shape=info.input_shape, num_classes=10)
    with pytest.raises(ValueError, match="last_conv"):
        Februus(epochs=1).fit(mlp, torch.rand(8, 1, 8, 8))
    with pytest.raises(ValueError, match="fitted"):
        Februus().purify(mlp, torch.rand(2, 1, 8, 8))


def test_autoencoder_learns_digits(setting):
    model, _, clean, x = setting
    fitted = AutoencoderPurifier().fit(model, clean, generator=gen(3))
    rec = fitted.purify(model, x)
    mse = float(((rec - x) ** 2).mean())
    baseline = float(((clean.mean(0, keepdim=True) - x) ** 2).mean())  # predict the mean image
    assert mse < 0.5 * baseline
    with pytest.raises(ValueError, match="fitted"):
        AutoencoderPurifier().purify(model, x)


def test_removal_mask_dilation_and_validation(setting):
    """dilate=d grows the thresholded Grad-CAM mask by a (2d+1)x(2d+1) max filter: a superset of the
    paper's mask that contains every pixel within d (Chebyshev) of it and nothing farther."""
    model, goal, _, x = setting
    stamped = goal.apply(x[:20])
    plain = Februus(cam_threshold=0.8, dilate=0).removal_mask(model, stamped)
    grown = Februus(cam_threshold=0.8, dilate=1).removal_mask(model, stamped)
    assert bool((grown >= plain).all()) and float(grown.sum()) > float(plain.sum())
    for m0, m1 in zip(plain[:, 0], grown[:, 0]):
        r, c = torch.nonzero(m0, as_tuple=True)
        rr, cc = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
        dist = ((rr[..., None] - r).abs().maximum((cc[..., None] - c).abs())).amin(-1)  # Chebyshev distance
        assert torch.equal(m1.bool(), dist <= 1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="dilate"):
            Februus(dilate=bad)
