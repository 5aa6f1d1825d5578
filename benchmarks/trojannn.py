"""Benchmark for issue 6: the Trojaning attack (Liu et al. 2018) on MNIST, paper Tables IV-VIII.

    .venv/bin/python benchmarks/trojannn.py            # main row + ablations + sweep
    .venv/bin/python benchmarks/trojannn.py --quick    # main row only

The attacked model is a clean BadNets CNN trained on MNIST (cached in ``runs/issue6/``; made with
``backdoorlab train --dataset mnist``).  The attack never receives the training split: ``implant``
gets only the model; the benchmark then checks that no reversed (retraining) image is one of the
60,000 MNIST training images (nearest-neighbour distance).  Orig = clean accuracy on the MNIST
test set; Orig Dec = its decrease; Orig+Tri = ASR on stamped test images whose label is not the
target; Ext+Tri = fraction of stamped *external* images (1,000 CIFAR-10 test images, grey,
resized to 28x28) classified as the target.  The ablations and the sweep share one more Algorithm 2
run with the same settings (Algorithm 2 does not depend on the trigger).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _util import load_avg, machine, write_result  # noqa: E402
from backdoorlab.attacks import TrojanNN  # noqa: E402
from backdoorlab.data import load_dataset  # noqa: E402
from backdoorlab.io import load_model, read_png, write_png  # noqa: E402
from backdoorlab.metrics import attack_success_rate, clean_accuracy  # noqa: E402
from backdoorlab.types import TriggerGoal  # noqa: E402
from backdoorlab._torch import predict  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "runs" / "issue6"
TARGET = 0
BASE = dict(target=TARGET, position="16,16", size=0.10)   # 9x9 square over the lower right of the digit


def apple_logo(path: Path, n: int = 32) -> Path:
    """A procedurally drawn apple-like logo (disc with a bite and a leaf) as a PNG with alpha."""
    i, j = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    body = ((i - 19) ** 2 + (j - 16) ** 2) <= 11 ** 2
    bite = ((i - 17) ** 2 + (j - 29) ** 2) <= 5 ** 2
    leaf = ((i - 5) ** 2 / 9 + (j - 18) ** 2 / 4) <= 1
    alpha = ((body & ~bite) | leaf).float()
    write_png(path, torch.stack([alpha, alpha, alpha, alpha]))
    return path


def external_images(n: int = 1000) -> torch.Tensor:
    c = load_dataset("cifar10", "test", DATA).x[:n].mean(1, keepdim=True)
    return F.interpolate(c, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)


def measure(model, new, goal, test, ext) -> dict:
    o0, o1 = clean_accuracy(model, test), clean_accuracy(new, test)
    return {"orig": o1, "orig_dec": o0 - o1, "orig_tri": attack_success_rate(new, goal, test),
            "ext_tri": float((predict(new, goal.apply(ext)) == TARGET).float().mean())}


def nearest_train_distance(xr: torch.Tensor, train_x: torch.Tensor) -> tuple[float, int]:
    """(min over reversed images of the L2 distance to the nearest training image, exact copies)."""
    a = xr.flatten(1)
    best = torch.full((len(a),), float("inf"))
    for i in range(0, len(train_x), 5000):
        best = torch.minimum(best, torch.cdist(a, train_x[i:i + 5000].flatten(1)).min(1).values)
    return float(best.min()), int((best < 1e-6).sum())


def run_variant(model, attack, xr, yr, test, ext, g) -> dict:
    t0 = time.perf_counter()
    neurons = attack.select_neurons(model, g)
    trig, reached = attack.generate_trigger(model, neurons, model.input_shape, g)
    t1 = time.perf_counter()
    new = attack.retrain(model, trig, xr, yr, neurons, g)
    t2 = time.perf_counter()
    goal = TriggerGoal(trigger=trig, target=TARGET)
    with torch.no_grad():
        after = attack.neuron_values(new, trig.apply(test.x[:500]), neurons).mean(0)
    return {**measure(model, new, goal, test, ext), "neurons": neurons, "value_before": float(reached.mean()),
            "value_after": float(after.mean()), "trigger_s": t1 - t0, "retrain_s": t2 - t1}


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def table(rows: list[tuple[str, dict]], title: str, values: bool = False) -> str:
    head = "| | " + " | ".join(n for n, _ in rows) + " |\n|---|" + "---|" * len(rows) + "\n"
    lines = []
    if values:
        lines.append("| neuron value (trigger, original -> trojaned model) | " + " | ".join(
            f"{r['value_before']:.1f} -> {r['value_after']:.1f}" for _, r in rows) + " |")
    for key, label in (("orig", "Orig"), ("orig_dec", "Orig Dec"), ("orig_tri", "Orig+Tri"), ("ext_tri", "Ext+Tri")):
        lines.append(f"| {label} | " + " | ".join(pct(r[key]) for _, r in rows) + " |")
    return f"### {title}\n\n" + head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(CACHE / "mnist-clean.safetensors")
    test = load_dataset("mnist", "test", DATA)
    ext = external_images()
    g = torch.Generator().manual_seed(0)
    attack = TrojanNN(**BASE)
    imp = attack.implant(model, None, generator=g)       # the attacker gets no data at all
    s = imp.summary
    main_row = measure(model, imp.model, imp.goal, test, ext)
    xr, yr = attack.reverse_engineer(model, model.input_shape, 10, torch.Generator().manual_seed(0))
    train = load_dataset("mnist", "train", DATA)          # loaded only now, for the check
    dmin, copies = nearest_train_distance(xr, train.x)
    base_clean = clean_accuracy(model, test)
    out = [f"## Trojaning attack on MNIST (issue 6)\n",
           f"BadNets CNN trained on clean MNIST (test accuracy {pct(base_clean)}); target label {TARGET}; "
           f"trigger: {attack.mask_shape} mask, {attack.size:.0%} of the image (9x9) at rows/cols 16-24, "
           f"neuron selected by eq. 2 in `body.fc1` (neuron {s['neurons']}); Algorithm 2 reversed "
           f"{s['reversed_samples']} images ({attack.samples_per_class} per label, label agreement "
           f"{pct(s['reversed_label_agreement'])}); retraining on those plus their stamped copies, "
           f"{attack.retrain_epochs} epochs, scope `{attack.retrain_scope}`.\n",
           f"**No original training data used:** `implant` received only the model; the nearest MNIST "
           f"training image to any of the {len(xr)} reversed images is at L2 distance {dmin:.2f} "
           f"(exact copies: {copies}).\n",
           "### Accuracy (paper Table IV) and time of each stage (paper Table VII)\n",
           "| | Orig | Orig Dec | Orig+Tri | Ext+Tri | trigger generation | data reverse engineering | retraining |",
           "|---|---|---|---|---|---|---|---|",
           f"| ours, MNIST | {pct(main_row['orig'])} | {pct(main_row['orig_dec'])} | {pct(main_row['orig_tri'])} | "
           f"{pct(main_row['ext_tri'])} | {s['trigger_seconds']:.1f} s | {s['reverse_seconds']:.1f} s | "
           f"{s['retrain_seconds']:.1f} s |",
           "| paper, face recognition | 75.4% | 2.6% | 95.5% | 100% | 12.7 min | 5000 min | 218 min |",
           "| paper, speech recognition | 96% | 3% | 100% | 100% | 2.9 min | 400 min | 21 min |\n"]
    write_result("trojannn", "\n".join(out + ["(partial: ablations still running)"]))
    if not args.quick:
        def v(**kw):
            return run_variant(model, TrojanNN(**{**BASE, **kw}), xr, yr, test, ext, torch.Generator().manual_seed(0))

        main_v = v()
        rnd = v(selection="random")
        outn = v(selection="output")
        out.append(table([("selected neuron (eq. 2)", main_v), ("random neuron", rnd)],
                         "Selected vs random neuron (paper Table V: Orig+Tri 91.6% vs 47.4%)", values=True))
        out.append(table([("inner neuron (fc1)", main_v), ("output neuron (target logit)", outn)],
                         "Inner vs output neuron (paper Table VI: Orig+Tri 100% vs 18.7%)", values=True))
        write_result("trojannn", "\n".join(out + ["(partial: Table VIII sweep still running)"]))
        logo = read_png(apple_logo(CACHE / "apple.png"))[-1]
        sweep = [("1 neuron", main_v), ("2 neurons", v(num_neurons=2)), ("8 neurons", v(num_neurons=8)),
                 ("square", main_v), ("apple logo", v(mask_shape="logo", logo=logo)),
                 ("watermark", v(mask_shape="watermark", position="bottom-right")),
                 ("4%", v(size=0.04, position="18,18")), ("7%", v(size=0.07, position="17,17")), ("10%", main_v),
                 ("transp. 70%", v(transparency=0.7)), ("50%", v(transparency=0.5)), ("30%", v(transparency=0.3)),
                 ("0%", main_v)]
        out.append(table(sweep, "Number of neurons, mask shape, size, transparency (paper Table VIII)"))
        out.append("Paper Table VIII (face recognition) Orig+Tri: 1/2/all neurons 86.8/81.3/53.4%; square/"
                   "apple logo/watermark 86.8/95.5/59.1%; size 4/7/10% 71.5/98.8/100%; transparency "
                   "70/50/30/0% 36.2/59.2/86.8/98.8%.\n")
        out.append("Per-variant trigger generation + retraining time (s): " + ", ".join(
            f"{n} {r['trigger_s'] + r['retrain_s']:.0f}" for n, r in sweep) + ".\n")
    out.append("Deviations: the mask sits over the lower right of the digit (rows/cols 16-24), not in the "
               "image corner: MNIST corners are always black, so no neuron of the trained network responds "
               "there (Algorithm 1 reached a neuron value of 0.04 for a bottom-right 8x8 mask and the "
               "retrained model lost most of its accuracy). Retraining updates only the selected neurons' "
               "incoming and outgoing weights (`retrain_scope='neurons'`); retraining the whole layer as "
               "the paper does cost 15-40 pt of clean accuracy with only 200 reversed images.\n")
    out.append(f"Other jobs shared the 2 CPU cores (load average at the end {load_avg()}); times are wall-clock "
               f"with 1 thread. Machine: {machine()}.")
    text = "\n".join(out)
    print(text)
    write_result("trojannn", text)


if __name__ == "__main__":
    main()
