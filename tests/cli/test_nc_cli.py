"""``backdoorlab scan`` and ``backdoorlab repair nc-unlearn|nc-prune`` on a saved digits BadNets model."""
from __future__ import annotations

import json

import pytest

from backdoorlab.cli import main
from backdoorlab.io import load_model, save_ground_truth, save_model, truth_path

BUDGET = ["--set", "nc.epochs=30", "--set", "nc.patience=2", "--set", "nc.early_stop_patience=4"]
NC_FLAGS = ["--nc-epochs", "8", "--nc-batches-per-epoch", "5", "--nc-batch-size", "16", "--nc-patience", "2"]


@pytest.fixture(scope="module")
def model_file(badnets, digits, tmp_path_factory):
    model, goal, poisoned = badnets
    path = tmp_path_factory.mktemp("nc") / "bd.safetensors"
    save_model(path, model, dataset=digits[0].info.to_json())
    return path, goal


def test_scan_json_files_and_exit_code(model_file, capsys):
    path, goal = model_file
    out = path.parent / "scan"
    rc = main(["scan", str(path), "--json", "--fail-on-detect", "--clean-per-class", "20", "--out", str(out), *BUDGET])
    data = json.loads(capsys.readouterr().out)
    assert rc == 3 and data["backdoored"] is True and data["suspects"] == [goal.target]
    assert len(data["anomaly_index"]) == 10 and data["anomaly_index"][goal.target] > 2
    assert data["detectors"]["neural-cleanse"]["evidence"]["flagged"] == [goal.target]
    assert (out / f"neural-cleanse_label{goal.target}_trigger.png").exists()
    assert (out / "neural-cleanse_label9_mask.png").exists()
    rc = main(["scan", str(path), "--no-files", "--clean-per-class", "20", *BUDGET])
    text = capsys.readouterr().out
    assert rc == 0 and "BACKDOORED" in text and "anomaly index" in text


def test_scan_rejects_unknown_detector_and_field(model_file, capsys):
    path, _ = model_file
    assert main(["scan", str(path), "--detectors", "nope"]) == 2
    assert main(["scan", str(path), "--set", "nc.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_repair_nc_unlearn_with_ground_truth(model_file, capsys):
    path, goal = model_file
    truth = save_ground_truth(truth_path(path.with_name("gt.safetensors")), goal)
    out = path.with_name("fixed.safetensors")
    rc = main(["repair", str(path), "--method", "nc-unlearn", "--json", "--truth", str(truth), "-o", str(out),
               "--clean-per-class", "20", "--epochs", "3", "--lr", "0.02",   # same clean set and NC run as the scan
               "--nc-epochs", "30", "--nc-patience", "2", "--nc-early-stop-patience", "4"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["asr_trigger"] == "ground truth" and data["summary"]["target"] == goal.target
    assert data["summary"]["flagged"] and data["summary"]["repaired"]
    assert data["after"]["attack_success_rate"] < 0.5 * data["before"]["attack_success_rate"]
    assert load_model(out)[0] is not None


def test_repair_nc_prune_uses_reversed_trigger(model_file, capsys):
    path, goal = model_file
    out = path.with_name("pruned.safetensors")
    rc = main(["repair", "nc-prune", str(path), "--json", "-o", str(out), "--clean-fraction", "0.3",
               "--repair-unflagged", "true", *NC_FLAGS])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["asr_trigger"] == "reversed trigger" and data["summary"]["repaired"]
    assert data["summary"]["curve"][0]["pruned"] == 0 and load_model(out)[0] is not None
