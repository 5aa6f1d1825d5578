"""Benchmark for issue 9: Deep Partition Aggregation on MNIST (Levine & Feizi, ICLR 2021).

(a) speed: the same k = 100 partition ensemble trained with members together (stacked parameters,
    one batched step for all) and one after another, in the same run; same accuracy expected.
(b) certificate: k = 1,200 partitions (the paper's MNIST setting), members together; fraction of
    test images certified against > 500 insertions/deletions (paper: >= 50%, median 509 as recalled);
    the one-after-another time for 1,200 is extrapolated from the first members, measured in this run.

    .venv/bin/python benchmarks/certify_dpa.py [--test 1000] [--partitions 1200] [--steps 200]
    .venv/bin/python benchmarks/certify_dpa.py --speed-only --speed-partitions 100 --speed-steps 20  # (a) only
"""
from __future__ import annotations

import argparse
import time

import torch

from _certify_common import DATA, header, table, threads, write

from backdoorlab.certify.dpa import DeepPartitionAggregation  # noqa: E402
from backdoorlab.data import load_dataset  # noqa: E402


class _Stop(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=1200)
    ap.add_argument("--speed-partitions", type=int, default=100)
    ap.add_argument("--speed-steps", type=int, default=None, help="steps for (a) (default: --steps)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--shift", type=int, default=2, help="random translation augmentation (pixels)")
    ap.add_argument("--seq-members", type=int, default=40, help="members timed one after another for (b)")
    ap.add_argument("--speed-repeats", type=int, default=3, help="interleaved timings of each mode in (a); best kept")
    ap.add_argument("--speed-only", action="store_true",
                    help="run only (a) and write results/certify_dpa_speed.md (certify_dpa_speed_1thread.md "
                         "with OMP_NUM_THREADS=1; certify_dpa.md is left alone)")
    args = ap.parse_args()
    nthreads = threads()
    train, test = load_dataset("mnist", "train", DATA), load_dataset("mnist", "test", DATA)
    sel = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:args.test]
    xt, yt = test.x[sel], test.y[sel]
    common = dict(steps=args.steps, batch_size=16, lr=0.003, width=args.width, shift=args.shift)

    # (a) speed, same run
    rows_a = []
    res = {}
    speed = dict(common, steps=args.speed_steps or args.steps)
    secs: dict[str, list[float]] = {"together": [], "sequential": []}
    for rep in range(args.speed_repeats):  # interleaved; training is deterministic, so every repeat is the same model
        for mode in ("together", "sequential"):
            d = DeepPartitionAggregation(partitions=args.speed_partitions, mode=mode, **speed)
            ens = d.train(train.x, train.y, num_classes=10)
            secs[mode].append(ens.seconds)
            print(mode, f"{ens.seconds:.2f} s", flush=True)
            if rep == 0:
                cert = d.certify(train.x, train.y, xt, ensemble=ens)
                acc = float((cert.prediction == yt).float().mean())
                base = float((ens.member_predictions(xt) == yt).float().mean())
                res[mode] = (acc, base, cert)
    for mode in ("together", "sequential"):
        acc, base, cert = res[mode]
        rows_a.append([mode, f"{min(secs[mode]):.2f}", " / ".join(f"{t:.2f}" for t in secs[mode]),
                       f"{100 * acc:.2f}", f"{100 * base:.2f}", cert.median_tolerance(yt)])
        print(rows_a[-1], flush=True)
    same_votes = bool(torch.equal(res["together"][2].votes, res["sequential"][2].votes))
    speedup = min(secs["sequential"]) / min(secs["together"])

    cmd = (f".venv/bin/python benchmarks/certify_dpa.py --test {args.test} --partitions {args.partitions} "
           f"--steps {args.steps} --width {args.width} --shift {args.shift} --speed-partitions {args.speed_partitions} "
           f"--speed-steps {speed['steps']} --speed-repeats {args.speed_repeats} "
           f"--seq-members {args.seq_members}" + (" --speed-only" if args.speed_only else ""))
    intro = [f"Members: two strided 5x5 conv layers (width {args.width}, {2 * args.width}) + linear, Adam lr 0.003, "
             f"{args.steps} steps of batch 16 drawn from the member's own partition, random shifts of up to "
             f"{args.shift} px (the paper: Network-in-Network, 200 epochs, random-crop augmentation; a member that "
             f"large, 1,200 times, does not fit this shared 2-core CPU, so ours is smaller and weaker).  Partitions by the sum of 0..255 pixel values mod k.  "
             f"{len(xt)} random MNIST test images.", "",
             f"## (a) members together vs one after another (k = {args.speed_partitions}, {speed['steps']} steps, same run)",
             ""]
    intro += table(["mode", "train seconds (best)", "each repeat", "DPA accuracy %", "base accuracy %",
                    "median certified"], rows_a)
    intro += [f"Speed-up together vs one after another (best of {args.speed_repeats} interleaved repeats each, "
              f"so a burst of other jobs on the shared CPU does not decide it): **{speedup:.1f}x**; "
              f"identical votes on every test image: {same_votes}.", ""]
    if args.speed_only:
        name = "certify_dpa_speed" + ("" if nthreads == 2 else f"_{nthreads}thread")
        write(name, header("Deep Partition Aggregation on MNIST (issue 9): speed only", cmd) + intro)
        return
    write("certify_dpa", header("Deep Partition Aggregation on MNIST (issue 9)", cmd) + intro
          + [f"## (b) k = {args.partitions}: not finished in this run (CPU time).", ""])

    # (b) the paper's k = 1200
    d = DeepPartitionAggregation(partitions=args.partitions, **common)
    ens = d.train(train.x, train.y, num_classes=10)
    cert = d.certify(train.x, train.y, xt, ensemble=ens)
    acc = float((cert.prediction == yt).float().mean())
    base = float((ens.member_predictions(xt) == yt).float().mean())
    seq = DeepPartitionAggregation(partitions=args.partitions, mode="sequential", **common)
    stamps: list[float] = []

    def stop(done, total):  # time members 2..seq_members+1 (after the shared set-up), then stop
        stamps.append(time.perf_counter())
        if done > args.seq_members:
            raise _Stop

    try:
        seq.train(train.x, train.y, num_classes=10, progress=stop)
    except _Stop:
        pass
    seq_est = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * args.partitions
    sizes = [0, 100, 200, 300, 400, 450, 500, 501, 550, 600]
    curve = cert.curve(yt, sizes)
    lines = header("Deep Partition Aggregation on MNIST (issue 9)", cmd) + intro + [
              f"## (b) k = {args.partitions} (the paper's MNIST setting)", "",
              f"Trained together in {ens.seconds:.0f} s; one after another measured on the first {args.seq_members} "
              f"members in this run and extrapolated: {seq_est:.0f} s ({seq_est / ens.seconds:.1f}x).  "
              f"DPA accuracy {100 * acc:.2f}%, base-classifier accuracy {100 * base:.2f}%, median certified "
              f"robustness **{cert.median_tolerance(yt)}** (paper: >= 50% certified at > 500 insertions, "
              f"i.e. median > 500, with 1,200 partitions).", ""]
    lines += table(["insertions/deletions e"] + [str(e) for e in sizes],
                   [["certified accuracy %"] + [f"{100 * a:.1f}" for _, a in curve]])
    write("certify_dpa", lines)


if __name__ == "__main__":
    main()
