"""Benchmark for issue 9: Steinhardt, Koh & Liang (NeurIPS 2017) on MNIST-1-7 (classes 1 and 7, 784 pixels).

For each eps: Algorithm 1's upper bound U* on the defender's training objective under the oracle
sphere + slab defense (70th percentile radii), the candidate attack run through the real sanitizer
(oracle F, and F refitted on the poisoned data) and the learner, and the clean test loss / error.

    .venv/bin/python benchmarks/certify_sphere_slab.py [--iterations 600]
"""
from __future__ import annotations

import argparse
import time

import torch

from _certify_common import DATA, header, table, threads, write

from backdoorlab.certify.sphere_slab import SphereSlabBound, feasible_set, hinge  # noqa: E402
from backdoorlab.data import load_dataset  # noqa: E402

EPS = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3]
QUANTILE = 0.7   # sphere and slab radii: this percentile of the clean distances


def pair(ds):
    s = (ds.y == 1) | (ds.y == 7)
    return ds.x[s].flatten(1).double(), torch.where(ds.y[s] == 7, 1.0, -1.0).double()


_DATA: dict = {}   # this process's data and oracle F (set by _init)


def _load(dataset: str) -> dict:
    """The 1-vs-7 train / test pairs and the oracle F fitted on the clean training data (once per run:
    they do not depend on eps)."""
    x, y = pair(load_dataset(dataset, "train", DATA))
    xt, yt = pair(load_dataset(dataset, "test", DATA))
    return {"x": x, "y": y, "xt": xt, "yt": yt, "fs": feasible_set(x, y, QUANTILE)}


def _init(data: dict) -> None:
    """Process initializer: the data and F loaded by the parent (sent once per worker, not per eps)."""
    threads()
    _DATA.update(data)


def _one(task):
    """One eps: Algorithm 1, the attack through the sanitizer(s) and the learner; (row, summary, below)."""
    eps, iterations, rho, data_dependent = task
    x, y, xt, yt, fs = (_DATA[k] for k in ("x", "y", "xt", "yt", "fs"))
    b = SphereSlabBound(rho=rho, eta=0.05, iterations=iterations, quantile=QUANTILE)
    t0 = time.perf_counter()
    bound = b.certify(x, y, eps, fs=fs)
    r = b.attack_through_defense(x, y, bound, fs)
    r2 = (b.attack_through_defense(x, y, bound, fs, data_dependent=True) if data_dependent
          else {"achieved_objective": float("nan"), "poison_kept": "-", "poison_total": "-"})
    r3 = b.attack_through_defense(x, y, bound, fs, keep_clean=True)
    th = r["theta"]
    test_loss = float(hinge(th, xt, yt).mean())
    test_err = float(((xt @ th[:-1] + th[-1]) * yt <= 0).double().mean())
    below = all(o <= bound.upper for o in (r["achieved_objective"], r2["achieved_objective"],
                                           r3["achieved_objective"]) if o == o)
    t3 = float(hinge(r3["theta"], xt, yt).mean())
    row = [eps, f"{bound.upper:.4f}", f"{r3['achieved_objective']:.4f}", f"{t3:.4f}",
           f"{r['achieved_objective']:.4f}", f"{r['poison_kept']}/{r['poison_total']}",
           f"{r2['achieved_objective']:.4f}", f"{r2['poison_kept']}/{r2['poison_total']}",
           f"{test_loss:.4f}", f"{100 * test_err:.2f}", f"{time.perf_counter() - t0:.0f}"]
    print(row, flush=True)
    return row, (eps, bound.upper, t3, test_loss, r["clean_removed"] / len(y)), below


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--rho", type=float, default=2.0)
    ap.add_argument("--dataset", default="mnist", help="mnist (MNIST-1-7) or digits (the 8x8 CI stand-in)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one eps each)")
    ap.add_argument("--data-dependent", action="store_true",
                    help="also run the attack through the data-dependent sanitizer (F refitted on the poisoned data)")
    args = ap.parse_args()
    threads()
    from concurrent.futures import ProcessPoolExecutor

    data = _load(args.dataset)
    tasks = [(eps, args.iterations, args.rho, args.data_dependent) for eps in EPS]
    if args.jobs == 1:
        _init(data)
        results = [_one(t) for t in tasks]
    else:
        with ProcessPoolExecutor(max_workers=args.jobs, initializer=_init, initargs=(data,)) as pool:
            results = list(pool.map(_one, tasks))   # one eps per worker process, 1 thread each
    rows = [row for row, _, _ in results]
    summary = [summ for _, summ, _ in results]
    always_below = all(ok for _, _, ok in results)
    y, yt = data["y"], data["yt"]
    lines = header(f"Sphere + slab certified bounds on {args.dataset} 1-vs-7 (issue 9)",
                   f".venv/bin/python benchmarks/certify_sphere_slab.py --iterations {args.iterations} --rho {args.rho} "
                   f"--dataset {args.dataset} --jobs {args.jobs}" + (" --data-dependent" if args.data_dependent else ""))
    lines += [f"Linear SVM (hinge, bias, ||theta|| <= {args.rho}) on {len(y)} {args.dataset} training images of 1 (-1) and 7 (+1), "
              f"{len(yt)} test images; oracle sphere + slab at the 70th percentile of the clean distances; Algorithm 1 "
              f"with T = {args.iterations}, eta = 0.05 (one worker process per eps); the candidate attack = floor(eps * n) points from the later iterates (the most U* at eps covers: a "
              f"rounded-up count would weigh more than eps).  "
              f"The learner is the same dual averaging on the sanitized data (4T iterations at eta 0.2, best iterate).", "",
              "Paper (qualitative, Figure 2): MNIST-1-7 is resilient — the upper bound stays low as eps grows to 0.3 — "
              "while IMDB goes from 12% to 23% test error with 3% poison (per-eps values not retrieved).", ""]
    lines += table(["eps", "U* (upper bound)", "attack objective (poison filtered by oracle F, all clean kept)",
                    "its test hinge", "attack objective (oracle F on all points)", "poison kept",
                    "attack objective (data-dep. F)", "poison kept", "test hinge (oracle F)", "test error % (oracle F)",
                    "seconds"], rows)
    lines += [f"Achieved objective <= U* at every eps (all three pipelines): **{always_below}**.  The first "
              "objective column is the quantity U* bounds (min over theta of the clean average + eps x the poison "
              "that passes F); the oracle-F column also removes the clean points outside F "
              f"({100 * summary[0][4]:.0f}% of them at the 70th percentile of both the sphere and the slab distances), "
              "which lowers the objective further.", "",
              "U* bounds the defender's *training* objective under any attack inside the oracle F.  It bounds the test "
              "loss only under the paper's two assumptions: (1) train and test losses concentrate (large n), and "
              "(2) removing the clean points outside F does not change the learned model materially.  The bound for the "
              "data-dependent F needs the paper's SDP relaxation (not implemented); the data-dependent columns (with "
              "--data-dependent; nan / - when not run, to spare the shared CPU) only run our attack through that "
              "sanitizer.", "",
              f"Measured test hinge loss of the attacked model (all clean kept) <= U* at every eps: "
              f"**{all(t <= u for _, u, t, _, _ in summary)}**; the largest ratio test / U* is "
              f"{max(t / u for _, u, t, _, _ in summary if u > 0):.2f} (a ratio above 1 is assumption (1) failing by "
              f"that much: the test loss is not the training objective).  U* at eps = {summary[-1][0]}: "
              f"**{summary[-1][1]:.4f}** against {summary[0][1]:.4f} at eps = 0 (hinge; a loss of 1 = a margin-less "
              f"classifier): {'consistent with' if summary[-1][1] < 0.5 else 'NOT consistent with'} the paper's "
              "qualitative result that MNIST-1-7 is resilient under the oracle sphere + slab defense.", ""]
    write(f"certify_sphere_slab_{args.dataset}", lines)


if __name__ == "__main__":
    main()
