"""``backdoorlab purify METHOD MODEL``: every printed rate equals the library's own computation on the
same inputs (the whole digits test set, the non-target images stamped with the true trigger)."""
from __future__ import annotations

import json

import pytest

from backdoorlab._torch import predict
from backdoorlab.cli import main
from backdoorlab.defenses.filter import PURIFIERS
from backdoorlab.io import save_ground_truth, save_model, truth_path


@pytest.fixture(scope="module")
def model_file(badnets, digits, tmp_path_factory):
    model, goal, _ = badnets
    path = tmp_path_factory.mktemp("purify") / "bd.safetensors"
    save_model(path, model, dataset=digits[0].info.to_json())
    save_ground_truth(truth_path(path), goal)
    return path


def test_purify_median_numbers_match_the_library(model_file, badnets, digits, capsys):
    model, goal, _ = badnets
    _, test = digits
    assert main(["purify", "median", str(model_file), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    x, y = test.x, test.y
    med = PURIFIERS["median"]()
    rel = goal.relevant(y)
    xs, ts = goal.apply(x[rel]), goal.target_for(y[rel])
    assert data["n_clean"] == len(y) and data["n_stamped"] == int(rel.sum())
    assert data["clean_accuracy_before"] == pytest.approx(float((predict(model, x) == y).double().mean()))
    assert data["clean_accuracy_after"] == pytest.approx(float((predict(model, med.purify(model, x)) == y).double().mean()))
    assert data["attack_success_rate_before"] == pytest.approx(float((predict(model, xs) == ts).double().mean()))
    assert data["attack_success_rate_after"] == pytest.approx(
        float((predict(model, med.purify(model, xs)) == ts).double().mean()))
    assert data["attack_success_rate_before"] == 1.0   # the fixture's backdoor (3x3 corner square)


def test_purify_without_ground_truth_reports_clean_accuracy_only(badnets, digits, tmp_path, capsys):
    model, _, _ = badnets
    path = save_model(tmp_path / "m.safetensors", model, dataset=digits[0].info.to_json())
    assert main(["purify", "flip", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    _, test = digits
    flipped = PURIFIERS["flip"]().purify(model, test.x)
    assert "attack_success_rate_after" not in data
    assert data["clean_accuracy_after"] == pytest.approx(float((predict(model, flipped) == test.y).double().mean()))
