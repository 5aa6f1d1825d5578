"""HTML audit report: content from a saved run, and a headless-Chromium render check."""
import json
import re
import shutil
import subprocess

import pytest

from backdoorlab.cli import main
from backdoorlab.io import png_bytes, save_ground_truth, save_model, truth_path
from backdoorlab.report import render_html


def _fake_run():
    import torch

    return ({"command": "backdoorlab scan m.safetensors", "subcommand": "scan", "seed": 0,
             "created": "2026-11-21T00:00:00+00:00", "versions": {"backdoorlab": "0.1.0"},
             "result": {"backdoored": True, "suspects": [3], "anomaly_index": [0.1, 0.5, 0.2, 4.2],
                        "threshold": 2.0, "labels": [0, 1, 2, 3], "roc": {"fpr": [0, 0.1, 1], "tpr": [0, 0.9, 1]},
                        "auroc": 0.95},
             "images": {"true_trigger": "t.png", "nc_label3_trigger": "a.png"}},
            {"true_trigger": png_bytes(torch.ones(1, 4, 4)), "nc_label3_trigger": png_bytes(torch.zeros(1, 4, 4))})


def test_render_has_verdict_images_plots_and_command():
    run, images = _fake_run()
    page = render_html(run, images)
    assert "BACKDOORED — suspected target label(s): 3" in page
    assert page.count("data:image/png;base64,") == 2
    assert page.count("<rect") == 4 + 1 and "threshold 2" in page  # 4 bars + ROC frame
    assert "<polyline" in page and "backdoorlab scan m.safetensors" in page
    assert "<script>alert" not in render_html({**run, "command": "<script>alert(1)</script>"}, images)


def test_repair_verdict_and_table():
    run = {"subcommand": "repair", "result": {"method": "nad", "before": {"clean_accuracy": 0.99,
           "attack_success_rate": 1.0}, "after": {"clean_accuracy": 0.98, "attack_success_rate": 0.01}}}
    page = render_html(run, {})
    assert "attack success 100.00% → 1.00%" in page and "<th>before</th>" in page


def test_save_run_then_report_cli(tmp_path, handwired, digits, capsys):
    bd, clean, trig, target = handwired
    m = save_model(tmp_path / "m.safetensors", clean, dataset=digits[0].info.to_json())
    from backdoorlab.types import TriggerGoal

    save_ground_truth(truth_path(m), TriggerGoal(trigger=trig, target=target))
    assert main(["evaluate", str(m), "--save-run", str(tmp_path / "run")]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["subcommand"] == "evaluate" and run["result"]["clean_accuracy"] > 0.9
    assert run["images"] == {"true_trigger": "true_trigger.png"} and run["seed"] == 0
    assert main(["report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / "report.html").read_text()
    assert "true trigger (target 3)" in page and "clean_accuracy" in page
    # a run folder whose "PNG" is something else is refused, and the earlier report is kept
    (tmp_path / "run" / "true_trigger.png").write_bytes(b"<script>alert(1)</script>")
    assert main(["report", str(tmp_path / "run")]) == 2
    assert "true_trigger.png: not a usable PNG" in capsys.readouterr().err
    assert (tmp_path / "run" / "report.html").read_text() == page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    run, images = _fake_run()
    page = tmp_path / "report.html"
    page.write_text(render_html(run, images))
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert "BACKDOORED — suspected target label(s): 3" in dom
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert m and m.group(1) == m.group(2) == "2"
    console_errors = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln and ("Error" in ln or "Uncaught" in ln)]
    assert console_errors == []
