"""`backdoorlab certify` sub-commands on digits (fast settings): every number the CLI prints is
recomputed with the library on the same test subset and must agree exactly."""
from __future__ import annotations

import json

import pytest
import torch

from backdoorlab.cli import main
from backdoorlab.data import load_dataset


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _subset(n, seed=0):
    """The CLI's test subset: the first n of a seeded permutation, sorted."""
    train, test = load_dataset("digits", "train", None), load_dataset("digits", "test", None)
    sel = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return train, test.x[sel], test.y[sel]


def test_certify_knn_json_matches_the_library(capsys):
    from backdoorlab.certify.knn import CertifiedKNN, CertifiedRNN

    out = _json(capsys, ["certify", "knn", "--k", "25", "--test", "60", "--sizes", "0,5,13", "--json"])
    train, x, y = _subset(60)
    cert = CertifiedKNN(k=25).certify(train.x, train.y, x, num_classes=10)
    assert out["unit"].startswith("operations")
    assert [tuple(p) for p in out["curve"]] == cert.curve(y, [0, 5, 13])
    assert out["median_tolerance"] == cert.median_tolerance(y)
    assert out["curve"][0][1] > 0.8 and out["curve"][2][1] == 0.0   # e* <= floor(25 / 2) = 12 for every input
    out2 = _json(capsys, ["certify", "--method", "knn", "--r", "2.5", "--test", "60", "--json"])
    rc = CertifiedRNN(r=2.5).certify(train.x, train.y, x, num_classes=10)
    assert out2["certifier"] == "rNN r=2.5" and out2["median_tolerance"] == rc.median_tolerance(y)


def test_certify_dpa_matches_the_library_and_sequential_gives_the_same_votes(capsys):
    from backdoorlab.certify.dpa import DeepPartitionAggregation

    out = _json(capsys, ["certify", "dpa", "--partitions", "6", "--steps", "15", "--test", "60", "--sizes", "0,1,2,3",
                         "--compare-sequential", "--json"])
    train, x, y = _subset(60)
    cert = DeepPartitionAggregation(partitions=6, steps=15, seed=0).certify(train.x, train.y, x, num_classes=10)
    assert out["accuracy"] == pytest.approx(float((cert.prediction == y).float().mean()))
    assert out["median_tolerance"] == cert.median_tolerance(y)
    assert [tuple(p) for p in out["curve"]] == cert.curve(y, [0, 1, 2, 3])
    assert out["curve"][3][1] == 0.0            # 6 voters: the gap is at most 6, so e* <= 3 only at a 6-0 vote
    assert out["accuracy_sequential"] == out["accuracy"]


def test_certify_sphere_slab_matches_the_library(capsys):
    from backdoorlab.certify.sphere_slab import SphereSlabBound

    out = _json(capsys, ["certify", "sphere-slab", "--eps", "0,0.1", "--iterations", "60", "--json"])
    train = load_dataset("digits", "train", None)
    sel = (train.y == 1) | (train.y == 7)
    xb, yb = train.x[sel].flatten(1), (train.y[sel] == 7).double() * 2 - 1
    for r, eps in zip(out["results"], (0.0, 0.1)):
        bound = SphereSlabBound(iterations=60).certify(xb, yb, eps)
        assert r["upper"] == pytest.approx(bound.upper, rel=1e-12)
        assert r["achieved_objective"] <= r["upper"] + 1e-9
    assert out["results"][1]["poison_total"] == int(0.1 * len(yb))   # floor(eps n): 25 of 252 * 0.1 = 25.2


def test_certify_bad_input_is_one_line(capsys):
    assert main(["certify", "sphere-slab", "--classes", "1", "--iterations", "5"]) == 2
    assert "two classes" in capsys.readouterr().err
