"""CLI: end-to-end on digits, bad input gives one clear stderr line and a non-zero exit."""
import json

import pytest
import torch

from backdoorlab.cli import main
from backdoorlab.io import save_ground_truth, save_model, truth_path


@pytest.fixture(scope="module")
def saved(tmp_path_factory, badnets, digits):
    d = tmp_path_factory.mktemp("cli")
    model, goal, poisoned = badnets
    p = save_model(d / "bd.safetensors", model, dataset=digits[0].info.to_json())
    save_ground_truth(truth_path(p), goal, poisoned.poison_indices)
    return p


def test_evaluate_json(saved, capsys):
    assert main(["evaluate", str(saved), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clean_accuracy"] > 0.95 and out["attack_success_rate"] > 0.95
    assert out["robust_accuracy"] < 0.05 and out["n_test"] == 540


def test_sensitivity_table(saved, capsys):
    assert main(["sensitivity", str(saved), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["variants"]
    orig = [r for r in rows if r["variant"].endswith("(original)")]
    assert orig and all(r["attack_success_rate"] > 0.95 for r in orig)
    one = [r for r in rows if r["variant"] == "1x1"][0]
    assert one["attack_success_rate"] < 0.5  # a 1-pixel remnant of a 3x3 square does not fire


def test_train_and_attack_commands(tmp_path, capsys):
    assert main(["attack", "badnets", "--dataset", "digits", "--epochs", "8", "--trigger", "square",
                 "-o", str(tmp_path / "a.safetensors"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (tmp_path / "a.truth.safetensors").exists() and out["poisoned"] == 126
    assert out["attack_success_rate"] > 0.9


def test_method_flag_spelling_is_accepted(capsys):
    with pytest.raises(SystemExit):
        main(["attack", "--method", "badnets", "--help"])
    assert "BadNets" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "/nonexistent/m.safetensors"], "m.safetensors: model file not found"),
    (["evaluate", "{model}", "--dataset", "mnist", "--data-dir", "/nonexistent"],
     "data directory /nonexistent does not exist"),
])
def test_bad_input_one_line_no_traceback(argv, message, saved, capsys):
    argv = [a.replace("{model}", str(saved)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_truncated_model_file(tmp_path, saved, capsys):
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(saved.read_bytes()[:100])
    (tmp_path / "t.json").write_text(saved.with_suffix(".json").read_text())
    assert main(["evaluate", str(bad)]) == 2
    assert "corrupt or truncated safetensors" in capsys.readouterr().err


def test_pickled_model_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, tmp_path / "e.pt")
    (tmp_path / "e.json").write_text(json.dumps({"format": "backdoorlab-model", "arch": "digits-cnn",
                                                 "arch_kwargs": {}}))
    assert main(["evaluate", str(tmp_path / "e.pt")]) == 2
    out = capsys.readouterr()
    assert "refused" in out.err and "pwned" not in out.err and "pwned" not in out.out


def test_wrong_classes_for_dataset(tmp_path, saved, capsys):
    assert main(["evaluate", str(saved), "--dataset", "gtsrb", "--data-dir", str(tmp_path)]) == 2
    assert "no gtsrb data" in capsys.readouterr().err
