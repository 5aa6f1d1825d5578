"""Benchmark for issue 9: randomized smoothing on MNIST (Cohen et al. 2019), read for backdoors (seed 000).

For sigma in {0.25, 0.5}: train a base classifier with Gaussian noise at sigma, certify random test
images with CERTIFY (n0 = 100, n draws, alpha = 0.001), report certified accuracy at radii 0, 0.25, 0.5,
1.0 and the fraction of test inputs certified against a white 3x3 / 5x5 BadNets patch (bottom-right)
and against every 3x3 / 5x5 patch.

    .venv/bin/python benchmarks/certify_smoothing.py [--test 200] [--n 10000] [--arch mlp]
"""
from __future__ import annotations

import argparse
import time

import torch

from _certify_common import DATA, header, table, threads, write

from backdoorlab.certify.smoothing import RandomizedSmoothing, patch_certified_fraction, train_with_noise  # noqa: E402
from backdoorlab.data import load_dataset  # noqa: E402
from backdoorlab.models import build  # noqa: E402
from backdoorlab.training import init_weights  # noqa: E402
from backdoorlab.triggers import PatchTrigger  # noqa: E402

RADII = [0.0, 0.25, 0.5, 1.0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--dataset", default="mnist")
    args = ap.parse_args()
    threads()
    train, test = load_dataset(args.dataset, "train", DATA), load_dataset(args.dataset, "test", DATA)
    info = train.info
    sel = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.test]
    xt, yt = test.x[sel], test.y[sel]
    kw = {"hidden": [256, 256]} if args.arch == "mlp" else {}
    sizes = [3, 5] if info.input_shape[0] == 1 else [3, 5, 10]
    rows, prow = [], []
    for sigma in (0.25, 0.5):
        g = torch.Generator().manual_seed(0)
        model = init_weights(build(args.arch, input_shape=info.input_shape, num_classes=10, mean=info.mean,
                                   std=info.std, **kw), g)
        t0 = time.perf_counter()
        train_with_noise(model, train, sigma=sigma, generator=g, epochs=args.epochs, batch_size=128, lr=0.05)
        t_train = time.perf_counter() - t0
        rs = RandomizedSmoothing(sigma=sigma, n0=args.n0, n=args.n, alpha=0.001)
        t0 = time.perf_counter()
        cert = rs.certify(model, xt, generator=torch.Generator().manual_seed(1))
        t_cert = time.perf_counter() - t0
        rows.append([sigma] + [f"{100 * cert.certified_accuracy(yt, r):.1f}" for r in RADII]
                    + [f"{float(cert.radius.median()):.3f}", f"{t_train:.0f}", f"{t_cert:.0f}"])
        for s in sizes:
            p = patch_certified_fraction(cert, xt, s, PatchTrigger.square(info.input_shape, s, "bottom-right"))
            prow.append([sigma, f"{s}x{s}", f"{p['trigger_norm_median']:.2f}", f"{100 * p['certified_trigger']:.1f}",
                         f"{p['max_patch_norm']:.2f}", f"{100 * p['certified_any_patch']:.1f}"])
        print(rows[-1], prow[-len(sizes):], flush=True)
    lines = header(f"Randomized smoothing on {args.dataset} (issue 9)",
                   f".venv/bin/python benchmarks/certify_smoothing.py --test {args.test} --n {args.n} --n0 {args.n0} "
                   f"--arch {args.arch} --dataset {args.dataset}")
    lines += [f"Base model: {args.arch} trained {args.epochs} epochs with Gaussian noise at sigma; CERTIFY with "
              f"n0 = {args.n0}, n = {args.n}, alpha = 0.001 (one-sided Clopper-Pearson) on {len(xt)} random test "
              f"images — n and the test set are far smaller than Cohen et al.'s (n = 100,000, 500 images) to fit "
              f"the shared CPU; a small n only lowers p_A's lower bound, so radii are conservative.  With n = {args.n} the "
              f"largest certifiable radius is sigma * Phi^-1(alpha^(1/n)) "
              f"(= {0.25 * _cap(args.n):.2f} at sigma 0.25, {0.5 * _cap(args.n):.2f} at 0.5), so radius 1.0 is out of "
              f"reach at sigma 0.25 by construction.  Reference (Cohen et al., CIFAR-10, ResNet-110, n = 100,000): "
              f"sigma 0.25 -> 60/43/0% at r 0.25/0.5/1.0; sigma 0.5 -> 55/41/23%.  Cohen et al. publish no MNIST table "
              f"and seed 000 gives no smoothing numbers, so there is no MNIST figure to set beside ours.", "",
              "## Certified accuracy (%) vs L2 radius", ""]
    lines += table(["sigma"] + [f"r={r}" for r in RADII] + ["median radius", "train s", "certify s"], rows)
    lines += ["## Backdoor reading: fraction of test inputs certified against patch triggers", "",
              "A white k x k patch on the black MNIST corner changes the image by exactly k in L2 (3 for 3x3, 5 for "
              "5x5); any k x k patch can change it by up to k * sqrt(C).  Smoothing radii at these sigmas never "
              "reach that: **randomized smoothing certifies essentially nothing against full-intensity patch "
              "triggers** — the weakness seed 000 and Pham & Sun point to.", ""]
    lines += table(["sigma", "patch", "white patch L2 (median)", "certified vs white patch %", "any-patch L2 max",
                    "certified vs any patch %"], prow)
    write(f"certify_smoothing_{args.dataset}", lines)


def _cap(n: int) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.001 ** (1 / n)))


if __name__ == "__main__":
    main()
