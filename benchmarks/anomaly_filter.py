"""Benchmark for issue 5: the anomaly-detection input filter of "Neural Trojans" (Liu et al., ICCD 2017;
seed 000) on the BadNets models of the filter benchmarks (``benchmarks/_filter_common.py``).

The defender crafts abnormal samples from a clean pool (random solid / noise squares, isolated
saturated pixels), fits a decision tree (crafted = 1, clean = 0) once, and scores inputs by the
tree's smoothed leaf probability of "abnormal".  Same data split as ``benchmarks/strip.py``:
1000 clean training images as the pool, 1000 more to set the threshold at a preset FRR, 2000 clean
and 2000 stamped test images (classes other than the target).

    .venv/bin/python benchmarks/anomaly_filter.py                    # mnist (+ gtsrb if cached)
    .venv/bin/python benchmarks/anomaly_filter.py --datasets mnist
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _filter_common import DATA, badnets_model, model_path, pct, split_sets  # noqa: E402
from _util import md_table, write_result  # noqa: E402

from backdoorlab._stats import auroc, threshold_at_fpr  # noqa: E402
from backdoorlab.defenses.filter.anomaly import AnomalyFilter  # noqa: E402

VARIANTS = {  # label -> filter; the first is the default
    "blocks (default: 8x8 cells, max/mean/min; 5 trees)": AnomalyFilter(),
    "blocks, one tree (n_trees=1, the seed's single tree)": AnomalyFilter(n_trees=1),
    "input pixels, one tree (the earlier default)": AnomalyFilter(space="input", n_trees=1),
    "input pixels, 5 trees": AnomalyFilter(space="input"),
    "penultimate features": AnomalyFilter(space="features"),
    "blocks + features": AnomalyFilter(space="both"),
    "blocks, 14x14 cells": AnomalyFilter(grid=14),
}


def run(name: str, n_test: int) -> str:
    model, goal, train, test = badnets_model(name)
    pool, cal, (xc, _), (xt, _) = split_sets(train, test, goal, 1000, 1000, n_test)
    labels = torch.cat([torch.zeros(len(xc)), torch.ones(len(xt))])
    rows = []
    for label, flt in VARIANTS.items():
        t0 = time.thread_time()
        flt.score(model, cal[:2], pool)                     # fits the tree once (then cached)
        fit_s = time.thread_time() - t0
        t0 = time.thread_time()
        s_cal, s_clean, s_troj = (flt.score(model, v, pool) for v in (cal, xc, xt))
        ms = 1e3 * (time.thread_time() - t0) / (len(cal) + len(xc) + len(xt))
        row = [label, f"{auroc(torch.cat([s_clean, s_troj]), labels):.4f}"]
        for frr in (0.01, 0.05):
            thr = threshold_at_fpr(s_cal, frr)
            row += [pct(float((s_clean > thr).float().mean())), pct(float((s_troj <= thr).float().mean()))]
        rows.append(row + [f"{fit_s:.1f}", f"{ms:.3f}"])
        print(name, row, flush=True)
    side = goal.trigger.bbox()[2] - goal.trigger.bbox()[0]
    return (f"## {name}: BadNets {side}x{side} patch bottom-right -> {goal.target} "
            f"(model `{model_path(name).name}`)\n\n"
            + md_table(["tree sees", "AUROC", "FRR (preset 1%)", "FAR at 1%", "FRR (preset 5%)", "FAR at 5%",
                        "fit s (once)", "score ms / input"], rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=None,
                    help="comma-separated (default: mnist, and gtsrb if its model is cached)")
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.datasets.split(",") if args.datasets else \
        ["mnist"] + (["gtsrb"] if model_path("gtsrb").exists() else [])
    parts = [run(n, args.n_test) for n in names if n == "digits" or any(DATA.glob(f"{n}*.npz"))]
    body = ["# Anomaly-detection input filter (Neural Trojans, ICCD 2017; issue 5)", "",
            "Other developers' jobs shared the 2 CPU cores (times are CPU seconds of this process).  "
            "Pool: 1000 clean training images (the trees' clean class; per tree 4 crafted abnormal images per "
            "pool image, crafted ones that change no pixel by >= 0.1 dropped; the score is the mean over the "
            "trees of the Laplace-smoothed leaf probability); threshold: the (1 - FRR) quantile "
            "of 1000 more clean training images; evaluation: 2000 clean + 2000 stamped test images.  "
            "FAR = stamped inputs let through.  The trees are fitted once per (model, pool) and reused ('fit s').", "",
            *parts, "",
            "Why the pixel tree was useless (AUROC 0.50): a decision tree tests one pixel per node, and a "
            "random crafted patch rarely covers the few pixels of the real trigger, so no path of a depth-12 "
            "tree separates stamped inputs from clean ones.  Cell statistics (max / mean / min of each cell of "
            "an 8x8 grid, per channel) turn 'a patch somewhere' into 'this cell is brighter (darker) than clean "
            "images ever are there', which every crafted patch in that cell teaches the tree, wherever the "
            "trigger is.  Penultimate features alone do not separate: crafted random patches do not move "
            "the backdoored model's features the way its trigger does.",
            "",
            "Tree scores take few values, so the FAR at a preset FRR depends on where the threshold falls among "
            "them: on MNIST one tree gives FAR 0.4% at FRR 1% and five trees 3.8% (AUROC 0.994 / 0.997); five "
            "trees are the default because one tree's leaves tied stamped and clean inputs on digits for some "
            "crafting seeds (all stamped inputs let through).",
            "",
            "GTSRB (natural images): the trees learn nothing (AUROC 0.50, every input gets the same score).  In "
            "photographs every cell already spans dark and bright pixels, so a small crafted patch does not move "
            "a cell's max / min out of the clean range, and the means barely move: with 4 crafted images per "
            "clean one, every leaf is mostly 'abnormal' and the clean pool itself is classified abnormal.  "
            "The seed's question (would anomaly detection work against these attacks?) gets a measured answer: "
            "for a patch on a uniform background (MNIST) yes, for a patch on natural images not with generic "
            "crafted anomalies and these features.",
            "",
            "Paper: Liu et al.'s trojan inputs were mostly out-of-distribution images (seed 000: the work "
            "predates BadNets), so the paper has no number for a patch trigger to put beside these."]
    path = write_result("anomaly_filter", "\n".join(body))
    print(path.read_text())


if __name__ == "__main__":
    main()
