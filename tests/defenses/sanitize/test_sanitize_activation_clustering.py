"""Activation clustering (Chen et al. 2018): planted poison, the size rules' regime, digits BadNets."""
import pytest
import torch
from sanitize_planted import planted

from backdoorlab.defenses.sanitize import ActivationClustering, retrain
from backdoorlab.metrics import attack_success_rate, clean_accuracy


def test_minority_poison_is_found_exactly_by_every_analysis():
    model, ds, mask = planted(n_poison=20)
    for analysis in ("relative-size", "silhouette", "exclusion"):
        s = ActivationClustering(analysis=analysis).scan(model, ds)
        if analysis == "relative-size":                       # clean Gaussian classes split ~50/50:
            assert bool(s.flagged[mask].all())                # no small cluster there
        else:
            assert torch.equal(s.flagged, mask), analysis


def test_half_poisoned_class_needs_the_exclusion_analysis():
    model, ds, mask = planted(n_poison=200)                   # class 0: 200 clean + 200 poison
    assert not ActivationClustering(analysis="relative-size").scan(model, ds).flagged.any()
    assert torch.equal(ActivationClustering().scan(model, ds).flagged, mask)


def test_silhouette_matches_sklearn():
    from sklearn.metrics import silhouette_score

    g = torch.Generator().manual_seed(3)
    Z = torch.cat([torch.randn(30, 4, generator=g, dtype=torch.float64),
                   torch.randn(20, 4, generator=g, dtype=torch.float64) + 3])
    c = torch.cat([torch.zeros(30), torch.ones(20)]).long()
    ours = ActivationClustering()._silhouette(Z, c)
    assert ours == pytest.approx(silhouette_score(Z.numpy(), c.numpy()), abs=1e-9)


def test_digits_badnets_poison_removed_and_retrained_model_has_no_backdoor(badnets, digits):
    model, goal, poisoned = badnets                           # 10% of the set: class 0 is ~50% poison
    mask = poisoned.dataset.poison_mask
    s = ActivationClustering().scan(model, poisoned.dataset)
    tp = int((s.flagged & mask).sum())
    assert tp / int(mask.sum()) >= 0.9 and tp / int(s.flagged.sum()) >= 0.75   # measured 126/151
    new = retrain(model, poisoned.dataset, s.flagged, epochs=15, batch_size=64, lr=0.05,
                  generator=torch.Generator().manual_seed(0))
    _, test = digits
    assert attack_success_rate(new, goal, test) <= 0.02
    assert clean_accuracy(new, test) >= 0.9


@pytest.mark.parametrize("field,value", [("n_components", 0), ("reduce", "tsne"), ("analysis", "size"),
                                         ("size_threshold", 0.7), ("silhouette_threshold", 2.0),
                                         ("exclusion_threshold", -1.0), ("seed", -1)])
def test_invalid_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f"ActivationClustering.{field}"):
        ActivationClustering(**{field: value})
