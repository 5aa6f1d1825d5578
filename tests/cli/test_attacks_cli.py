"""``backdoorlab attack blend|trojannn|poison-frogs`` on digits: files written, ground truth loads."""
from __future__ import annotations

import json

import torch

from backdoorlab.attacks import AdditiveTrigger
from backdoorlab.cli import main
from backdoorlab.io import load_ground_truth, load_model, save_model, truth_path
from backdoorlab.types import InstanceGoal, TriggerGoal


def test_attack_blend_additive(tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    rc = main(["attack", "blend", "--pattern", "additive", "--epsilon", "0.1", "--epochs", "2", "-o", str(out), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and out.exists() and data["poisoned"] == round(0.1 * 1257)
    goal, idx, info = load_ground_truth(truth_path(out))
    assert isinstance(goal.trigger, AdditiveTrigger) and abs(goal.trigger.epsilon - 0.1) < 1e-6 and len(idx) == data["poisoned"]
    assert info["attack"] == "blend" and info["params"]["pattern"] == "additive"


def test_attack_blend_bad_pattern_is_one_line_error(capsys):
    assert main(["attack", "blend", "--pattern", "stripes", "--epochs", "1"]) == 2
    assert "Blend.pattern must be one of" in capsys.readouterr().err


def test_attack_trojannn_and_poison_frogs(clean_model, digits, tmp_path, capsys):
    src = tmp_path / "clean.safetensors"
    save_model(src, clean_model, dataset=digits[0].info.to_json())
    rc = main(["attack", "trojannn", str(src), "--target", "3", "--trigger-steps", "20", "--samples-per-class", "3",
               "--reverse-steps", "5", "--retrain-epochs", "2", "--json"])
    data = json.loads(capsys.readouterr().out)
    out = tmp_path / "clean.trojannn.safetensors"
    assert rc == 0 and data["output"] == str(out) and out.exists()
    goal, idx, _ = load_ground_truth(truth_path(out))
    assert isinstance(goal, TriggerGoal) and goal.target == 3 and idx is None
    assert set(data["summary"]) >= {"trigger_seconds", "reverse_seconds", "retrain_seconds", "neurons"}
    rc = main(["attack", "poison-frogs", str(src), "--target-label", "3", "--steps", "20", "--epochs", "1", "--json"])
    data = json.loads(capsys.readouterr().out)
    out = tmp_path / "clean.poison-frogs.safetensors"
    assert rc == 0 and out.exists() and len(data["poison_indices"]) == 1
    goal, idx, _ = load_ground_truth(truth_path(out))
    assert isinstance(goal, InstanceGoal) and goal.target == 3 and idx.tolist() == data["poison_indices"]
    model, _ = load_model(out)
    assert torch.equal(model.body.conv1.weight, clean_model.body.conv1.weight)   # last-layer victim
