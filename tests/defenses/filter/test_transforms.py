"""Input transformations against hand-computed values and a literal median filter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backdoorlab.defenses.filter.transforms import BitDepth, Flip, MedianSmooth, ShrinkPad, median_filter


def test_flip_hand_computed():
    x = torch.tensor([[[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]]])
    assert torch.equal(Flip().purify(None, x), torch.tensor([[[[0.3, 0.2, 0.1], [0.6, 0.5, 0.4]]]]))


def test_bit_depth_hand_computed():
    x = torch.tensor([0.0, 0.1, 0.2, 0.5, 0.74, 1.0]).view(1, 1, 1, 6)
    # 1 bit: levels {0, 1}; 2 bits: levels {0, 1/3, 2/3, 1}
    assert torch.equal(BitDepth(bits=1).purify(None, x).flatten(), torch.tensor([0.0, 0, 0, 0, 1, 1]))
    assert torch.allclose(BitDepth(bits=2).purify(None, x).flatten(),
                          torch.tensor([0.0, 0, 1 / 3, 2 / 3, 2 / 3, 1]))


def test_median_matches_literal_and_removes_isolated_pixel():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 5, generator=g)
    xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
    slow = torch.empty_like(x)
    for i in range(6):
        for j in range(5):
            slow[:, :, i, j] = xp[:, :, i:i + 3, j:j + 3].flatten(2).median(2).values
    assert torch.equal(median_filter(x, 3), slow)
    spot = torch.zeros(1, 1, 5, 5)
    spot[0, 0, 2, 2] = 1.0
    assert float(MedianSmooth(size=3).purify(None, spot).max()) == 0.0


def test_shrink_pad_constant_image():
    x = torch.full((1, 1, 8, 8), 0.5)
    out = ShrinkPad(scale=0.5, fill=0.0).purify(None, x)
    assert torch.allclose(out[0, 0, 2:6, 2:6], torch.full((4, 4), 0.5))  # shrunk content, centred
    out[0, 0, 2:6, 2:6] = 0
    assert float(out.abs().sum()) == 0.0                                 # padding = fill
    rnd = ShrinkPad(scale=0.5, position="random", seed=3)
    assert torch.equal(rnd.purify(None, x.repeat(4, 1, 1, 1)), rnd.purify(None, x.repeat(4, 1, 1, 1)))


def test_validation():
    for make, field in [(lambda: ShrinkPad(scale=1.5), "scale"), (lambda: BitDepth(bits=0), "bits"),
                        (lambda: MedianSmooth(size=2), "size"), (lambda: ShrinkPad(position="left"), "position")]:
        with pytest.raises(ValueError, match=field):
            make()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Flip().purify(None, torch.full((1, 1, 2, 2), 2.0))
