"""`backdoorlab repair METHOD MODEL`: before/after CA / ASR, a new model file, --json."""
from __future__ import annotations

import json

import pytest

from backdoorlab.cli import main
from backdoorlab.io import load_model, save_ground_truth, save_model, truth_path

CHEAP = {"finetune": ["--epochs", "1"], "fine-pruning": ["--epochs", "1"],
         "nad": ["--teacher-epochs", "1", "--epochs", "1"], "i-bau": ["--uap-steps", "2"]}


@pytest.mark.parametrize("method", sorted(CHEAP))
def test_repair_cli(method, badnets, digits, tmp_path, capsys):
    model, goal, poisoned = badnets
    path = tmp_path / "bd.safetensors"
    save_model(path, model, dataset=digits[0].info.to_json())
    save_ground_truth(truth_path(path), goal, poisoned.poison_indices)
    out = tmp_path / "fixed.safetensors"
    # the `--method` spelling of the sub-command
    assert main(["repair", str(path), "--method", method, "-o", str(out), "--json", *CHEAP[method]]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == method and data["asr_trigger"] == "ground truth"
    assert data["before"]["attack_success_rate"] == 1.0
    assert 0 <= data["after"]["clean_accuracy"] <= 1
    fixed, meta = load_model(out)
    assert meta["extra"]["method"] == method and fixed.arch == model.arch


def test_invalid_hyper_parameter_is_one_line_error(badnets, digits, tmp_path, capsys):
    model, _, _ = badnets
    path = tmp_path / "bd.safetensors"
    save_model(path, model, dataset=digits[0].info.to_json())
    assert main(["repair", "nad", str(path), "--beta", "-1"]) == 2
    assert "NAD.beta" in capsys.readouterr().err
