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

from _certify_common import DATA, header, table, write

from backdoorlab.certify.sphere_slab import SphereSlabBound, feasible_set, hinge  # noqa: E402
from backdoorlab.data import load_dataset  # noqa: E402

EPS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]


def pair(ds):
    s = (ds.y == 1) | (ds.y == 7)
    return ds.x[s].flatten(1).double(), torch.where(ds.y[s] == 7, 1.0, -1.0).double()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--rho", type=float, default=2.0)
    ap.add_argument("--dataset", default="mnist", help="mnist (MNIST-1-7) or digits (the 8x8 CI stand-in)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    x, y = pair(load_dataset(args.dataset, "train", DATA))
    xt, yt = pair(load_dataset(args.dataset, "test", DATA))
    b = SphereSlabBound(rho=args.rho, eta=0.05, iterations=args.iterations, quantile=0.7)
    fs = feasible_set(x, y, b.quantile)
    rows, always_below = [], True
    for eps in EPS:
        t0 = time.perf_counter()
        bound = b.certify(x, y, eps, fs=fs)
        r = b.attack_through_defense(x, y, bound, fs)
        r2 = b.attack_through_defense(x, y, bound, fs, data_dependent=True)
        th = r["theta"]
        test_loss = float(hinge(th, xt, yt).mean())
        test_err = float(((xt @ th[:-1] + th[-1]) * yt <= 0).double().mean())
        always_below &= r["achieved_objective"] <= bound.upper and r2["achieved_objective"] <= bound.upper
        rows.append([eps, f"{bound.upper:.4f}", f"{r['achieved_objective']:.4f}", f"{r['poison_kept']}/{r['poison_total']}",
                     f"{r2['achieved_objective']:.4f}", f"{r2['poison_kept']}/{r2['poison_total']}",
                     f"{test_loss:.4f}", f"{100 * test_err:.2f}", f"{time.perf_counter() - t0:.0f}"])
        print(rows[-1], flush=True)
    lines = header(f"Sphere + slab certified bounds on {args.dataset} 1-vs-7 (issue 9)",
                   f".venv/bin/python benchmarks/certify_sphere_slab.py --iterations {args.iterations} --rho {args.rho} "
                   f"--dataset {args.dataset}")
    lines += [f"Linear SVM (hinge, bias, ||theta|| <= {args.rho}) on {len(y)} {args.dataset} training images of 1 (-1) and 7 (+1), "
              f"{len(yt)} test images; oracle sphere + slab at the 70th percentile of the clean distances; Algorithm 1 "
              f"with T = {args.iterations}, eta = 0.05; the candidate attack = eps * n points from the later iterates.  "
              f"The learner is the same dual averaging on the sanitized data (2T iterations, best iterate).", "",
              "Paper (qualitative, Figure 2): MNIST-1-7 is resilient — the upper bound stays low as eps grows to 0.3 — "
              "while IMDB goes from 12% to 23% test error with 3% poison (per-eps values not retrieved).", ""]
    lines += table(["eps", "U* (upper bound)", "attack objective (oracle F)", "poison kept", "attack objective (data-dep. F)",
                    "poison kept", "test hinge", "test error %", "seconds"], rows)
    lines += [f"Achieved objective <= U* at every eps: **{always_below}**.", "",
              "U* bounds the defender's *training* objective under any attack inside the oracle F.  It bounds the test "
              "loss only under the paper's two assumptions: (1) train and test losses concentrate (large n), and "
              "(2) removing the clean points outside F does not change the learned model materially.  The bound for the "
              "data-dependent F needs the paper's SDP relaxation (not implemented); the data-dependent column only runs "
              "our attack through that sanitizer.", ""]
    write(f"certify_sphere_slab_{args.dataset}", lines)


if __name__ == "__main__":
    main()
