"""``backdoorlab inspect-data`` on a digits BadNets model with its ground-truth file."""
import json

import pytest

from backdoorlab.cli import main
from backdoorlab.io import save_ground_truth, save_model, truth_path


@pytest.fixture(scope="module")
def model_file(badnets, digits, tmp_path_factory):
    model, goal, poisoned = badnets
    path = tmp_path_factory.mktemp("inspect") / "digits-badnets.safetensors"
    save_model(path, model, dataset=digits[0].info.to_json(), training={"epochs": 5, "batch_size": 64, "lr": 0.05})
    save_ground_truth(truth_path(path), goal, poisoned.poison_indices)
    return path


def test_flags_per_class_precision_recall_and_retrain(model_file, capsys):
    assert main(["inspect-data", "--model", str(model_file), "--method", "activation-clustering",
                 "--retrain", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    r = out["methods"]["activation-clustering"]
    assert out["per_class"]["poison"][0] == sum(out["per_class"]["poison"]) == 126   # all-to-one -> 0
    assert r["recall"] >= 0.9 and r["precision"] >= 0.75
    assert sum(r["flagged_per_class"]) == r["flagged"]
    assert r["after"]["attack_success_rate"] <= 0.05 < out["before"]["attack_success_rate"]
    assert model_file.with_name("digits-badnets.activation-clustering.safetensors").exists()


def test_all_methods_without_truth_and_bad_parameter(model_file, tmp_path, capsys):
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(model_file.read_bytes())
    bare.with_suffix(".json").write_bytes(model_file.with_suffix(".json").read_bytes())
    assert main(["inspect-data", "--model", str(bare), "--method", "all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["methods"]) == {"spectral-signatures", "activation-clustering", "pca-outliers"}
    assert "recall" not in out["methods"]["pca-outliers"]
    assert main(["inspect-data", "--model", str(model_file), "--method", "pca-outliers",
                 "--poison-fraction", "0.2"]) == 2
    assert "not a parameter" in capsys.readouterr().err
