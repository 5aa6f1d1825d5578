"""`backdoorlab certify` sub-commands on digits (fast settings)."""
from __future__ import annotations

import json

from backdoorlab.cli import main


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_certify_knn_json_and_method_spelling(capsys, tmp_path):
    out = _json(capsys, ["certify", "knn", "--k", "25", "--test", "60", "--sizes", "0,5,13", "--json"])
    assert out["unit"].startswith("operations")
    curve = dict((int(e), a) for e, a in out["curve"])
    assert curve[0] > 0.8 and curve[13] == 0.0
    out2 = _json(capsys, ["certify", "--method", "knn", "--r", "2.5", "--test", "60", "--json"])
    assert out2["certifier"] == "rNN r=2.5"


def test_certify_dpa_and_sphere_slab(capsys):
    out = _json(capsys, ["certify", "dpa", "--partitions", "6", "--steps", "15", "--test", "60", "--json"])
    assert 0.0 <= out["accuracy"] <= 1.0 and out["median_tolerance"] <= 3
    out = _json(capsys, ["certify", "sphere-slab", "--eps", "0,0.1", "--iterations", "60", "--json"])
    assert all(r["achieved_objective"] <= r["upper"] + 1e-9 for r in out["results"])


def test_certify_bad_input_is_one_line(capsys):
    assert main(["certify", "sphere-slab", "--classes", "1", "--iterations", "5"]) == 2
    assert "two classes" in capsys.readouterr().err
