"""The demo is the main job: pin its numbers on digits."""
import json

from backdoorlab.cli import main


def test_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--json"]) == 0
    steps = {(s["step"], s["model"]): s for s in json.loads(capsys.readouterr().out)["steps"]}
    assert steps[("train", "clean")]["clean_accuracy"] > 0.95
    bd = steps[("attack badnets", "backdoored")]
    assert bd["attack_success_rate"] > 0.95 and bd["clean_accuracy"] > 0.95
    scan_bd, scan_clean = steps[("scan (neural cleanse)", "backdoored")], steps[("scan (neural cleanse)", "clean")]
    assert scan_bd["backdoored"] and scan_bd["suspects"] == [0] and not scan_clean["backdoored"]
    rep = steps[("repair nc-unlearn", "backdoored")]
    assert rep["attack_success_rate"] < 0.05 and rep["clean_accuracy"] > 0.93
    strip = steps[("filter strip (FPR 5%)", "backdoored")]
    assert strip["detection_rate"] > 0.9 and strip["frr"] < 0.12
    ac = steps[("inspect-data activation-clustering", "training set")]
    assert ac["recall"] > 0.9
    knn = steps[("certify knn (k=41)", "digits data")]["certified_accuracy"]
    assert knn["0"] >= knn["5"] >= knn["10"] and knn["0"] > 0.9
    assert (tmp_path / "badnets.truth.safetensors").exists()
