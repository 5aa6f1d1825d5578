"""STRIP (Gao et al., ACSAC 2019) and every other input filter on BadNets models: FRR -> FAR beside
the paper's Table 3, AUROC of each filter, and STRIP's latency per input against plain inference.

    python benchmarks/strip.py                       # MNIST and GTSRB (cached models in runs/filter/)
    python benchmarks/strip.py --datasets digits     # quick run on the embedded digits
    python benchmarks/strip.py --datasets gtsrb-blend --superimpose sum
    python benchmarks/strip.py --datasets cifar10-trojannn-c --superimpose sum --filters strip --reps 0
                                                     # STRIP's own CIFAR-10 setting (PAPER_VICTIMS)

Victims ("datasets"): mnist / gtsrb / cifar10 / digits = BadNets white square (checkerboard on
CIFAR-10) at the bottom right; gtsrb-blend = an image-wide blended random-noise key (alpha 0.2);
models cached in runs/filter/ and runs/strip-v2/ (see _filter_common.py).  cifar10-trojannn-c /
cifar10-checker8-aug = the victim STRIP's authors train in their CIFAR-10 notebook (their trigger c
added to the image, their 6-conv net at half width, 1.2% poison, augmented training; see
PAPER_VICTIMS), with trigger c or with the 8x8 checkerboard patch; cached in runs/strip-v3/.

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

RUNS_V3 = Path(__file__).resolve().parents[1] / "runs" / "strip-v3"
# Trigger c of STRIP's CIFAR-10 experiments (Fig. 7c; TrojanNN's watermark trigger
# fc6_wm_1_81_694_1_0_0081.jpg, resized by the authors to 32x32 and added to the image).  Not shipped
# with the repository (third-party image): recovered pixel for pixel from the 32x32 rendering of
# ``imgSm`` in the authors' notebook (garrisongys/STRIP, STRIP_CIFAR10DeepArchit_Tb.ipynb, cell output
# of ``plt.imshow(imgSm)``, nearest-neighbour, 8-bit) and saved as an 8-bit PNG.
TRIGGER_C = RUNS_V3 / "trigger_c.png"

# STRIP's own CIFAR-10 victim, as the authors' notebook trains it, scaled to this CPU.  name ->
# (dataset, trigger).  Shared recipe (PAPER_RECIPE): the notebook's net (StripCifarNet: 3 x [conv, ELU,
# BN, conv, ELU, BN, max-pool, dropout 0.2/0.3/0.4], dense 10) at half its width (16, 16, 32, 32, 64, 64
# instead of 32 ... 128: a quarter of the FLOPs, so that training and N = 100 STRIP fit this shared CPU);
# raw [0, 1] inputs (the notebook's z-score is commented out); 600 of 50,000 images poisoned (1.2%) ->
# 120 of our 10,000, target 7; Keras ImageDataGenerator augmentation (rotation 15 degrees, shifts 10%,
# horizontal flips); RMSprop lr 1e-3 (rho 0.9) with L2 1e-4 on the kernels (weight decay 2e-4); batch 64;
# 25 epochs instead of 125 (CPU).
# "trojannn-c": x' = clip(x + T_c, 0, 1), the notebook's poison() (cv2.addWeighted(x, 1, T, 1, 0)) with
# 8-bit saturation.  "checker8": the earlier 8x8 black/white checkerboard patch, same recipe (isolates
# the trigger).  Both settings were fixed from the paper before any STRIP number was measured.
PAPER_VICTIMS = {"cifar10-trojannn-c": ("cifar10", "trojannn-c"),
                 "cifar10-checker8-aug": ("cifar10", "checker8")}
PAPER_DESC = {"trojannn-c": "STRIP's trigger c (TrojanNN watermark) added to the image, 1.2% poison, augmented "
                            "training",
              "checker8": "8x8 black/white checkerboard patch, 1.2% poison, augmented training"}
PAPER_RECIPE = {"arch": "strip-cifar-cnn", "width": 0.5, "rate": 0.012, "target": 7, "epochs": 25, "batch_size": 64,
                "lr": 1e-3, "rho": 0.9, "weight_decay": 2e-4, "rotation_deg": 15.0, "shift": 0.1, "hflip": True}


def _strip_cifar_net():
    """The authors' CIFAR-10 Keras model as an ImageClassifier, registered as ``strip-cifar-cnn`` for
    this benchmark only (so that load_model can rebuild it from the sidecar)."""
    from torch import nn

    from backdoorlab.models import ARCHITECTURES, ImageClassifier

    class StripCifarNet(ImageClassifier):
        """3 x [conv3x3, ELU, BN, conv3x3, ELU, BN, max-pool 2, dropout 0.2 / 0.3 / 0.4] + dense K;
        widths (32, 64, 128) x ``width`` (STRIP's notebook: width 1, 308,394 trainable weights)."""

        arch = "strip-cifar-cnn"
        last_conv = "body.conv6"

        def __init__(self, input_shape=(3, 32, 32), num_classes=10, mean=None, std=None, width=1.0):
            super().__init__(input_shape, num_classes, mean, std)
            self.arch_kwargs["width"] = float(width)
            C, H, W = self.input_shape
            chans = [C] + [max(1, round(c * width)) for c in (32, 32, 64, 64, 128, 128)]
            self.body = nn.Sequential()
            for i in range(6):
                self.body.add_module(f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
                self.body.add_module(f"elu{i + 1}", nn.ELU())
                self.body.add_module(f"bn{i + 1}", nn.BatchNorm2d(chans[i + 1], eps=1e-3, momentum=0.01))
                if i % 2 == 1:
                    self.body.add_module(f"pool{i // 2 + 1}", nn.MaxPool2d(2))
                    self.body.add_module(f"drop{i // 2 + 1}", nn.Dropout((0.2, 0.3, 0.4)[i // 2]))
            self.body.add_module("flatten", nn.Flatten())
            self.head = nn.Linear(chans[-1] * (H // 8) * (W // 8), num_classes)

    ARCHITECTURES.setdefault(StripCifarNet.arch, StripCifarNet)
    return ARCHITECTURES[StripCifarNet.arch]


def paper_trigger(kind: str, shape):
    from _filter_common import make_trigger

    if kind == "checker8":
        return make_trigger("checker", 8, shape)
    if not TRIGGER_C.exists():
        raise FileNotFoundError(f"{TRIGGER_C}: STRIP's trigger c is not shipped; decode it from the authors' "
                                "notebook (see TRIGGER_C above) into this 8-bit 32x32 PNG.")
    from backdoorlab.attacks.blend import AdditiveTrigger
    from backdoorlab.io import read_png

    return AdditiveTrigger(delta=read_png(TRIGGER_C))


def augment(x: torch.Tensor, g: torch.Generator, rotation_deg: float, shift: float, hflip: bool) -> torch.Tensor:
    """Keras ImageDataGenerator(rotation_range, width/height_shift_range, horizontal_flip): one random
    rotation, shift and flip per image, bilinear, edge pixels repeated (fill_mode 'nearest')."""
    import math

    import torch.nn.functional as F

    n = len(x)
    ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(rotation_deg)
    t = (torch.rand(n, 2, generator=g) * 2 - 1) * 2 * shift          # grid coordinates span 2 per side
    sx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    cos, sin = ang.cos(), ang.sin()
    theta = torch.stack([torch.stack([cos * sx, -sin, t[:, 0]], 1), torch.stack([sin * sx, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def paper_victim(name: str):
    """(model, goal, train, test) for a PAPER_VICTIMS entry, trained once into runs/strip-v3/."""
    import torch.nn.functional as F

    from _filter_common import DATA
    from backdoorlab.attacks import BadNets
    from backdoorlab.data import as_tensors, load_dataset
    from backdoorlab.io import load_ground_truth, load_model, save_ground_truth, save_model, truth_path
    from backdoorlab.metrics import attack_success_rate, clean_accuracy
    from backdoorlab.models import build
    from backdoorlab.training import init_weights, minibatch_loop

    _strip_cifar_net()
    data, kind = PAPER_VICTIMS[name]
    train, test = load_dataset(data, "train", DATA), load_dataset(data, "test", DATA)
    path = RUNS_V3 / f"{name}.safetensors"
    if not path.exists():
        r = PAPER_RECIPE
        g = torch.Generator().manual_seed(0)
        info = train.info
        poisoned = BadNets(trigger=paper_trigger(kind, info.input_shape), target=r["target"],
                           rate=r["rate"]).poison(train, generator=g)
        x, y = as_tensors(poisoned.dataset)
        model = init_weights(build(r["arch"], input_shape=info.input_shape, num_classes=info.num_classes,
                                   mean=[0.0] * info.input_shape[0], std=[1.0] * info.input_shape[0],
                                   width=r["width"]), g)
        opt = torch.optim.RMSprop(model.parameters(), lr=r["lr"], alpha=r["rho"], eps=1e-7,
                                  weight_decay=r["weight_decay"])
        g_aug = torch.Generator().manual_seed(1)
        per_epoch = -(-len(y) // r["batch_size"])
        t0 = time.perf_counter()

        def report(step, total):
            if step % per_epoch == 0:
                epoch = step // per_epoch
                line = f"{name}: epoch {epoch}/{r['epochs']} {time.perf_counter() - t0:.0f} s"
                if epoch % 5 == 0 or epoch == r["epochs"]:
                    model.eval()
                    sub = tuple(t[::5] for t in as_tensors(test))
                    line += (f"  CA(1k test) {100 * clean_accuracy(model, sub):.2f}%  "
                             f"ASR {100 * attack_success_rate(model, poisoned.goal, sub):.2f}%")
                    model.train()
                print(line, flush=True)

        steps, last = minibatch_loop(
            model, opt, len(y),
            lambda idx: F.cross_entropy(model(augment(x[idx], g_aug, r["rotation_deg"], r["shift"], r["hflip"])),
                                        y[idx]),
            epochs=r["epochs"], batch_size=r["batch_size"], cosine=False, generator=g, progress=report)
        secs = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(path, model, dataset=info.to_json(),
                   training={**r, "optimizer": "rmsprop", "steps": steps, "seconds": round(secs, 1),
                             "final_loss": last})
        save_ground_truth(truth_path(path), poisoned.goal, poisoned.poison_indices,
                          info={"attack": "badnets", "params": {"trigger": kind, "target": r["target"],
                                                                "rate": r["rate"]}})
    model, _ = load_model(path)
    goal = load_ground_truth(truth_path(path))[0]
    return model, goal, train, test

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


def victim(name: str):
    return paper_victim(name) if name in PAPER_VICTIMS else badnets_model(name)


def run(name: str, args) -> list[str]:
    from backdoorlab._stats import auroc
    from backdoorlab.defenses.filter import FILTERS
    from backdoorlab.defenses.filter.strip import Strip
    from backdoorlab.metrics import attack_success_rate, clean_accuracy

    model, goal, train, test = victim(name)
    n_test = min(args.n_test, len(test) // 2)
    pool, cal, (xc, yc), (xt, yt) = split_sets(train, test, goal, args.pool, args.cal, n_test)
    ca, asr = clean_accuracy(model, test), attack_success_rate(model, goal, test)
    desc = PAPER_DESC[PAPER_VICTIMS[name][1]] if name in PAPER_VICTIMS else describe(name, goal)
    lines = [f"### {name}: {desc} -> {goal.target} (CA {pct(ca)}, ASR {pct(asr)})", ""]
    from backdoorlab._torch import predict

    effective = predict(model, xt) == goal.target_for(yt)   # stamped inputs the backdoor actually flips
    strip = Strip(n_overlays=args.n_overlays, superimpose=args.superimpose)
    t0 = time.thread_time()
    h_cal, h_clean, h_troj = (strip.entropy(model, v, pool) for v in (cal, xc, xt))
    secs = time.thread_time() - t0
    s_cal, s_clean, s_troj = -h_cal, -h_clean, -h_troj
    if name in PAPER_VICTIMS:                              # keep the entropies for later analysis
        from safetensors.torch import save_file

        save_file({"cal": h_cal.contiguous(), "clean": h_clean.contiguous(), "trojaned": h_troj.contiguous(),
                   "effective": effective.to(torch.uint8).contiguous()},
                  str(RUNS_V3 / f"{name}.entropies.safetensors"))
    labels = torch.cat([torch.zeros(len(xc)), torch.ones(len(xt))])
    rows = []
    for frr in FRRS:
        frr_test, far = far_at(s_cal, s_clean, s_troj, frr)
        _, far_eff = far_at(s_cal, s_clean, s_troj[effective], frr)
        paper = PAPER.get(PAPER_VICTIMS[name][0] if name in PAPER_VICTIMS else dataset_of(name), {}).get(frr)
        _, far_roc = far_at(s_clean, s_clean, s_troj, frr)   # threshold set on the test clean inputs themselves
        rows.append([pct(frr, 1), pct(frr_test), pct(far), pct(far_eff), pct(far_roc),
                     pct(normal_fit_far(h_cal, h_troj, frr)), "-" if paper is None else pct(paper)])
    strip_secs = secs
    lines += [f"STRIP, N = {args.n_overlays} overlays, superimposition = {args.superimpose}; "
              f"{len(cal)} calibration, {len(xc)} clean + {len(xt)} trojaned test inputs "
              f"({1e3 * secs / (len(cal) + len(xc) + len(xt)):.2f} CPU ms per input on 1 thread). "
              f"Clean entropy mean {float(h_clean.mean()):.3f} (sd {float(h_clean.std()):.3f}), trojaned "
              f"{float(h_troj.mean()):.4f}; AUROC {auroc(torch.cat([s_clean, s_troj]), labels):.4f}.  "
              f"Lowest clean entropy {float(h_clean.min()):.4f} (calibration {float(h_cal.min()):.4f}), highest "
              f"trojaned {float(h_troj.max()):.4f}; 1% / 5% quantiles of clean {float(h_clean.quantile(0.01)):.4f} / "
              f"{float(h_clean.quantile(0.05)):.4f}, 95% / 99% of trojaned {float(h_troj.quantile(0.95)):.4f} / "
              f"{float(h_troj.quantile(0.99)):.4f}.", ""]
    lines += md_table(["preset FRR", "FRR on test", "FAR (all trojaned)",
                       f"FAR (the {int(effective.sum())} that reach the target)",
                       "FAR at this FRR on the test inputs (ROC point)", "FAR (normal fit, as paper)",
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
    if args.reps <= 0:                                   # --reps 0: no latency table
        return lines
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
    ap.add_argument("--train-only", action="store_true", help="train (cache) the victims and stop")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.train_only:
        for name in args.datasets:
            victim(name)
        return
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
