import pytest
import torch

from backdoorlab.triggers import BlendTrigger, PatchTrigger, parse_patch_spec


def test_patch_formula_matches_nc_eq1():
    x = torch.rand(5, 3, 6, 6)
    m = torch.zeros(1, 6, 6)
    m[0, 4:, 4:] = 0.5
    p = torch.rand(3, 6, 6)
    t = PatchTrigger(mask=m, pattern=p)
    expected = (1 - m) * x + m * p
    assert torch.allclose(t.apply(x), expected)
    assert t.l1() == pytest.approx(4 * 0.5)


def test_single_pixel_and_pattern_positions():
    t = PatchTrigger.single_pixel((1, 28, 28))
    assert t.mask.sum() == 1 and t.mask[0, 26, 26] == 1
    p = PatchTrigger.badnets_pattern((1, 28, 28))
    assert p.bbox() == (24, 24, 27, 27)
    assert p.pattern[0, 24:27, 24:27].sum() == 5  # checkerboard: 5 bright of 9
    x = torch.zeros(1, 1, 28, 28)
    assert p.apply(x).sum() == 5


def test_square_corner_and_rowcol():
    t = PatchTrigger.square((3, 32, 32), 4, (2, 5), color=(1.0, 0.0, 0.5))
    assert t.bbox() == (2, 5, 6, 9)
    assert torch.allclose(t.pattern[:, 3, 6], torch.tensor([1.0, 0.0, 0.5]))
    with pytest.raises(ValueError, match="inside the 32x32 image"):
        PatchTrigger.square((3, 32, 32), 4, (30, 30))


def test_shift_and_scale():
    t = PatchTrigger.square((1, 10, 10), 2, "bottom-right", margin=0)
    s = t.shifted(-3, -1)
    assert s.bbox() == (5, 7, 7, 9)
    assert t.scaled(2.0).bbox() == (6, 6, 10, 10)
    assert t.scaled(0.5).bbox() == (9, 9, 10, 10)


def test_blend_and_as_patch_agree():
    x = torch.rand(4, 1, 5, 5)
    b = BlendTrigger(pattern=torch.rand(1, 5, 5), alpha=0.2)
    assert torch.allclose(b.apply(x), 0.8 * x + 0.2 * b.pattern)
    assert torch.allclose(b.as_patch().apply(x), b.apply(x))


def test_bad_trigger_values_named():
    with pytest.raises(ValueError, match=r"PatchTrigger.mask must lie in \[0, 1\]"):
        PatchTrigger(mask=torch.full((1, 4, 4), 2.0), pattern=torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="BlendTrigger.alpha"):
        BlendTrigger(pattern=torch.zeros(1, 4, 4), alpha=1.5)
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 1, 4, 4\)"):
        PatchTrigger.square((1, 4, 4), 1).apply(torch.zeros(2, 3, 4, 4))


def test_parse_patch_spec():
    t = parse_patch_spec("3x3@bottom-right", (1, 28, 28))
    assert t.bbox() == (24, 24, 27, 27)
    assert parse_patch_spec("2x2@0,0", (1, 8, 8)).bbox() == (0, 0, 2, 2)
    with pytest.raises(ValueError, match="patch spec"):
        parse_patch_spec("big", (1, 8, 8))


def test_png_roundtrip(tmp_path):
    from backdoorlab.io import read_png, write_png

    img = torch.rand(3, 7, 5)
    write_png(tmp_path / "a.png", img)
    back = read_png(tmp_path / "a.png")
    assert back.shape == (3, 7, 5)
    assert (back - img).abs().max() <= 0.5 / 255 + 1e-6
    t = PatchTrigger.from_png(tmp_path / "a.png", (3, 32, 32), "top-left", margin=0)
    assert t.bbox() == (0, 0, 7, 5)
