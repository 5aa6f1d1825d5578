"""STRIP (Gao et al., ACSAC 2019) and every other input filter on BadNets models: FRR -> FAR beside
the paper's Table 3, AUROC of each filter, and STRIP's latency per input against plain inference.

    python benchmarks/strip.py                       # MNIST and GTSRB (cached models in runs/filter/)
    python benchmarks/strip.py --datasets digits     # quick run on the embedded digits
    python benchmarks/strip.py --datasets gtsrb-blend --superimpose sum   # STRIP's kind of victim

Victims ("datasets"): mnist / gtsrb / cifar10 / digits = BadNets white square (checkerboard on
CIFAR-10) at the bottom right; gtsrb-blend = an image-wide blended random-noise key (alpha 0.2), the
kind of trigger STRIP's paper uses on CIFAR-10 (an added "Hello Kitty" image); models cached in
runs/filter/ and runs/strip-v2/ (see _filter_common.py).

Setting: BadNets, white square trigger at the bottom right (3x3 on MNIST, 4x4 on GTSRB), target 0,
10% poison.  Defender: 1,000 clean training images as STRIP's overlay bank / the filters' clean
pool, 2,000 more to calibrate the threshold at each FRR.  Evaluation: 2,000 clean and 2,000
trojaned test images (the paper's sizes).  FRR and FAR are measured on the test images.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _filter_common import (RESULTS, badnets_model, dataset_of, describe, header, md_table, pct,  # noqa: E402
                            split_sets)

PAPER = {  # Table 3 of the STRIP paper: FRR -> FAR
    "mnist": {0.03: 0.0075, 0.02: 0.011, 0.01: 0.0185, 0.005: None},
    "gtsrb": {0.02: 0.0, 0.01: 0.0, 0.005: 0.0},
    "cifar10": {0.02: 0.0, 0.01: 0.0, 0.005: 0.0},
}
FRRS = (0.05, 0.03, 0.02, 0.01, 0.005)


def far_at(cal, clean, troj, frr):
    from backdoorlab._stats import threshold_at_fpr

    t = threshold_at_fpr(cal, frr)
    return float((clean > t).float().mean()), float((troj <= t).float().mean())


def normal_fit_far(cal_entropy, troj_entropy, frr):
    """The paper's boundary: the FRR-percentile of a normal fitted to clean entropies."""
    from statistics import NormalDist

    mu, sd = float(cal_entropy.mean()), float(cal_entropy.std())
    t = NormalDist(mu, sd).inv_cdf(frr)
    return float((troj_entropy >= t).float().mean())


def latency(model, pool, x, n_overlays: int, reps: int, superimpose: str):
    """Median CPU seconds (this thread; robust to other jobs on the machine) per single input:
    plain inference, STRIP (one forward of N blends), and a peer-style STRIP that runs one forward
    per overlay; plus batch-256 cost ratios."""
    from backdoorlab.defenses.filter.strip import Strip

    f = Strip(n_overlays=n_overlays, superimpose=superimpose)
    plain, strip, loop = [], [], []
    model.eval()
    with torch.no_grad():
        for i in range(reps):
            xi = x[i % len(x)].unsqueeze(0)
            t0 = time.thread_time(); model(xi); plain.append(time.thread_time() - t0)
            t0 = time.thread_time(); f.score(model, xi, pool); strip.append(time.thread_time() - t0)
            t0 = time.thread_time()
            for j in range(n_overlays):
                torch.softmax(model(f._superimpose(xi, pool[j:j + 1].unsqueeze(0))[:, 0]), 1)
            loop.append(time.thread_time() - t0)
        xb = x[:256]
        t0 = time.thread_time(); model(xb); tp = time.thread_time() - t0
        t0 = time.thread_time(); f.score(model, xb, pool); ts = time.thread_time() - t0
        t0 = time.thread_time()
        for j in range(n_overlays):
            torch.softmax(model(f._superimpose(xb, pool[j:j + 1].unsqueeze(0))[:, 0]), 1)
        tl = time.thread_time() - t0
    med = statistics.median
    return {"plain_ms": 1e3 * med(plain), "strip_ms": 1e3 * med(strip), "loop_ms": 1e3 * med(loop),
            "batch_ratio": ts / tp, "batch_loop_ratio": tl / tp}


def run(name: str, args) -> list[str]:
    from backdoorlab._stats import auroc
    from backdoorlab.defenses.filter import FILTERS
    from backdoorlab.defenses.filter.strip import Strip
    from backdoorlab.metrics import attack_success_rate, clean_accuracy

    model, goal, train, test = badnets_model(name)
    n_test = min(args.n_test, len(test) // 2)
    pool, cal, (xc, yc), (xt, yt) = split_sets(train, test, goal, args.pool, args.cal, n_test)
    ca, asr = clean_accuracy(model, test), attack_success_rate(model, goal, test)
    lines = [f"### {name}: {describe(name, goal)} -> {goal.target} (CA {pct(ca)}, ASR {pct(asr)})", ""]
    from backdoorlab._torch import predict

    effective = predict(model, xt) == goal.target_for(yt)   # stamped inputs the backdoor actually flips
    strip = Strip(n_overlays=args.n_overlays, superimpose=args.superimpose)
    t0 = time.thread_time()
    h_cal, h_clean, h_troj = (strip.entropy(model, v, pool) for v in (cal, xc, xt))
    secs = time.thread_time() - t0
    s_cal, s_clean, s_troj = -h_cal, -h_clean, -h_troj
    labels = torch.cat([torch.zeros(len(xc)), torch.ones(len(xt))])
    rows = []
    for frr in FRRS:
        frr_test, far = far_at(s_cal, s_clean, s_troj, frr)
        _, far_eff = far_at(s_cal, s_clean, s_troj[effective], frr)
        paper = PAPER.get(dataset_of(name), {}).get(frr)
        rows.append([pct(frr, 1), pct(frr_test), pct(far), pct(far_eff), pct(normal_fit_far(h_cal, h_troj, frr)),
                     "-" if paper is None else pct(paper)])
    strip_secs = secs
    lines += [f"STRIP, N = {args.n_overlays} overlays, superimposition = {args.superimpose}; "
              f"{len(cal)} calibration, {len(xc)} clean + {len(xt)} trojaned test inputs "
              f"({1e3 * secs / (len(cal) + len(xc) + len(xt)):.2f} CPU ms per input on 1 thread). "
              f"Clean entropy mean {float(h_clean.mean()):.3f} (sd {float(h_clean.std()):.3f}), trojaned "
              f"{float(h_troj.mean()):.4f}; AUROC {auroc(torch.cat([s_clean, s_troj]), labels):.4f}.", ""]
    lines += md_table(["preset FRR", "FRR on test", "FAR (all trojaned)",
                       f"FAR (the {int(effective.sum())} that reach the target)", "FAR (normal fit, as paper)",
                       "paper FAR"], rows)
    rows = []
    for fname in args.filters:
        cls = FILTERS[fname]
        flt = strip if fname == "strip" else cls()
        t0 = time.thread_time()
        if fname == "strip":
            a, b, cc = s_cal, s_clean, s_troj
            secs = strip_secs
        else:
            a, b, cc = (flt.score(model, v, pool) for v in (cal, xc, xt))
            secs = time.thread_time() - t0
        _, far1 = far_at(a, b, cc, 0.01)
        _, far5 = far_at(a, b, cc, 0.05)
        params = {k: v for k, v in dataclasses.asdict(flt).items() if isinstance(v, (int, float, str))}
        rows.append([fname, f"{auroc(torch.cat([b, cc]), labels):.4f}", pct(far1), pct(far5),
                     f"{1e3 * secs / (len(cal) + len(xc) + len(xt)):.3f}", f"`{params}`"])
    lines += ["Every registered filter, default settings, same data:", ""]
    lines += md_table(["filter", "AUROC", "FAR at FRR 1%", "FAR at FRR 5%", "ms / input", "settings"], rows)
    lat = [latency(model, pool, xc, n, args.reps, args.superimpose) for n in (10, 100)]
    rows = [[n, f"{d['plain_ms']:.3f}", f"{d['strip_ms']:.3f}", f"{d['strip_ms'] / d['plain_ms']:.2f}x",
             f"{d['loop_ms'] / d['plain_ms']:.2f}x", f"{d['batch_ratio']:.1f}x", f"{d['batch_loop_ratio']:.1f}x",
             "1.32x (N = 10, GPU)" if n == 10 else "-"] for n, d in zip((10, 100), lat)]
    lines += ["Latency per input (median CPU time of single-input calls, 1 thread) and batch-256 cost, STRIP vs "
              "plain inference, measured side by side; 'loop' = one forward per overlay (peer style):", ""]
    lines += md_table(["N", "plain ms", "STRIP ms", "STRIP / plain", "loop / plain", "batch STRIP / plain",
                       "batch loop / plain", "paper"], rows)
    return lines


def main() -> None:
    from backdoorlab.defenses.filter import FILTERS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist", "gtsrb"])
    ap.add_argument("--n-overlays", type=int, default=100)
    ap.add_argument("--superimpose", default="add", choices=["sum", "add", "blend"],
                    help="sum = x + x_b unclipped (the authors' code); add = the sum clipped to [0, 1] (default); "
                         "blend = 50/50 linear blend")
    ap.add_argument("--pool", type=int, default=1000)
    ap.add_argument("--cal", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--filters", nargs="+", default=[f for f in FILTERS if f != "nc-filter"],
                    help="filters compared by AUROC (nc-filter reverse-engineers a trigger first: slow)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cmd = "python benchmarks/strip.py " + " ".join(sys.argv[1:])
    lines = header("STRIP and input filters (issue 5)", cmd.strip())
    lines += ["Paper (Gao et al. 2019, Table 3, N = 100): MNIST square trigger FRR 3% / 2% / 1% -> FAR "
              "0.75% / 1.1% / 1.85%; CIFAR-10 and GTSRB FAR 0% at FRR 2%, 1%, 0.5%.  Latency (§5.4, GTSRB "
              "ResNet20 on a K80 GPU, N = 10): 6.125 ms vs 4.63 ms plain, 1.32x.", ""]
    for name in args.datasets:
        lines += run(name, args)
        print("\n".join(lines))
    lines += ["Notes: STRIP's threshold here is the empirical (1 - FRR) quantile of clean calibration scores "
              "(what `Guard` does); the 'normal fit' column uses the paper's rule.  Superimposition: 'sum' = x + x_b "
              "unclipped, what the authors' code does on float images; 'add' = the same sum clipped to [0, 1] (as "
              "8-bit images saturate); a 50/50 'blend' separates far worse on digits (AUROC about 0.63 vs 1.0), "
              "because halving a white trigger breaks it.  "
              "On one CPU thread a forward pass costs FLOPs in proportion to the images, so STRIP costs about N "
              "times plain inference in batch; the paper's 1.32x is a GPU latency where 10 images cost about "
              "what 1 does.  The single-input column shows the same effect on a CPU for small models.", ""]
    out = Path(args.out) if args.out else RESULTS / ("strip.md" if set(args.datasets) >= {"mnist"} else
                                                     f"strip_{'_'.join(args.datasets)}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
