"""Per-class PCA outlier removal (seed 000): Hotelling T² against a literal loop; planted poison."""
import numpy as np
import pytest
import torch
from sanitize_planted import planted

from backdoorlab.defenses.sanitize import PCAOutliers, kept_subset, retrain
from backdoorlab.defenses.sanitize.pca_outliers import pca_t2


def test_t2_matches_a_literal_loop():
    R = torch.randn(30, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    M = R.numpy() - R.numpy().mean(0)
    evals, evecs = np.linalg.eigh(np.cov(M, rowvar=False))
    top = np.argsort(evals)[::-1][:3]
    expected = [sum(float(M[i] @ evecs[:, j]) ** 2 / evals[j] for j in top) for i in range(len(M))]
    assert np.allclose(pca_t2(R, 3).numpy(), expected, rtol=1e-9)


def test_planted_poison_found_and_clean_tails_bounded():
    model, ds, mask = planted(n_poison=20)
    s = PCAOutliers().scan(model, ds)
    assert bool(s.flagged[mask].all())
    assert float(s.flagged[~mask].double().mean()) <= 0.05    # robust z > 3 on clean classes
    assert s.threshold == 3.0 and torch.equal(s.flagged, s.scores > 3.0)


def test_kept_subset_and_retrain_errors():
    model, ds, mask = planted(n_poison=20)
    kept, idx = kept_subset(ds, mask)
    assert len(kept) == 600 and not bool(mask[idx].any())
    with pytest.raises(ValueError, match="every sample was flagged"):
        kept_subset(ds, torch.ones(len(mask), dtype=torch.bool))
    with pytest.raises(ValueError, match="one entry per sample"):
        kept_subset(ds, mask[:5])
    with pytest.raises(ValueError, match="arch"):
        retrain(model, ds, mask, epochs=1)                     # PixelModel is not rebuildable


@pytest.mark.parametrize("field,value", [("n_components", 0), ("threshold", 0.0), ("batch_size", -2)])
def test_invalid_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f"PCAOutliers.{field}"):
        PCAOutliers(**{field: value})
