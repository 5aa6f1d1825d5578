"""Benchmark for issue 5 (training time): training-set sanitizers, then retraining on what is kept.

For each setting, a BadNets model trained on the poisoned set is scanned by each sanitizer
(precision / recall / AUROC of the flags against the poison indices), and a fresh model is trained
on the kept samples (CA / ASR on the clean test split).  Two regimes:

* all-to-one BadNets on 10% of the training set (our CLI default, BackdoorBench's setting):
  the target class is then about half poison;
* 10% of the *target class* poisoned (Tran et al.'s ε = 5-10% of the class; about 1% of the set).

    .venv/bin/python benchmarks/sanitize.py                  # digits + MNIST (trains what is missing)
    .venv/bin/python benchmarks/sanitize.py --only digits    # seconds

Backdoored models are cached in ``runs/sanitize/`` (git-ignored); MNIST's is the one
``backdoorlab attack badnets --dataset mnist --data-dir ../shared/data --trigger square --size 3
--target 0 --seed 0`` writes (this script trains the same one when it is missing).  Scan results
are cached in ``runs/sanitize/bench-<setting>.json`` so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _util import load_avg, machine  # noqa: E402

from backdoorlab._stats import auroc  # noqa: E402
from backdoorlab.attacks import BadNets  # noqa: E402
from backdoorlab.data import load_dataset  # noqa: E402
from backdoorlab.defenses.sanitize import ActivationClustering, PCAOutliers, SpectralSignatures, retrain  # noqa: E402
from backdoorlab.io import load_ground_truth, load_model, save_ground_truth, save_model, truth_path  # noqa: E402
from backdoorlab.metrics import evaluate  # noqa: E402
from backdoorlab.models import DEFAULT_ARCH, build  # noqa: E402
from backdoorlab.training import fit, init_weights  # noqa: E402
from backdoorlab.triggers import PatchTrigger  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "runs" / "sanitize"
RESULTS = ROOT / "benchmarks" / "results" / "sanitize.md"

# setting -> dataset, poison rate (fraction of the training set), epochs, batch, lr, retrain epochs,
#            expected in-class poison fraction (what a defender would give spectral signatures)
SETTINGS = {
    "digits-10%": ("digits", 0.10, 30, 64, 0.05, 30, 0.5),
    "digits-1%": ("digits", 0.011, 30, 64, 0.05, 30, 0.1),
    "mnist-10%": ("mnist", 0.10, 6, 128, 0.05, 2, 0.5),
    "mnist-1.1%": ("mnist", 0.011, 3, 128, 0.05, 2, 0.1),
}


def sanitizers(eps: float) -> dict:
    """label -> (sanitizer, retrain?)"""
    return {  # most important first: a run cut short still has them
        "SS, ε = 0.10 (BackdoorBench: 1.5 x 10% of the class)": (SpectralSignatures(poison_fraction=0.1), True),
        f"SS, ε = {eps:.2f} (in-class poison bound)": (SpectralSignatures(poison_fraction=eps), eps != 0.1),
        "AC, exclusion (default)": (ActivationClustering(), True),
        f"SS oriented, ε = {eps:.2f} (orient=True)": (SpectralSignatures(poison_fraction=eps, orient=True), True),
        "PCA outliers (seed 000)": (PCAOutliers(), True),
        "AC, relative size": (ActivationClustering(analysis="relative-size"), False),
        "AC, silhouette + smaller cluster (ART)": (ActivationClustering(analysis="silhouette"), False),
    }


def ensure_model(setting: str):
    """(model, poisoned dataset, poison mask, goal, test); trains and caches the model once,
    exactly as ``backdoorlab attack badnets --trigger square --size 3 --target 0 --seed 0``."""
    name, rate, epochs, bs, lr, _, _ = SETTINGS[setting]
    data_dir = None if name == "digits" else DATA
    train, test = load_dataset(name, "train", data_dir), load_dataset(name, "test", data_dir)
    path = CACHE / ("mnist-badnets-square.safetensors" if setting == "mnist-10%" else f"{setting}.safetensors")
    if not path.exists():
        g = torch.Generator().manual_seed(0)
        trig = PatchTrigger.square(train.info.input_shape, 3, "bottom-right", 1.0)
        poisoned = BadNets(trigger=trig, target=0, rate=rate).poison(train, generator=g)
        info = train.info
        model = init_weights(build(DEFAULT_ARCH[name], input_shape=info.input_shape,
                                   num_classes=info.num_classes, mean=info.mean, std=info.std), g)
        log = fit(model, poisoned.dataset, epochs=epochs, batch_size=bs, lr=lr, generator=g)
        save_model(path, model, dataset=info.to_json(), training=log.to_json())
        save_ground_truth(truth_path(path), poisoned.goal, poisoned.poison_indices,
                          info={"attack": "badnets", "trigger": "square", "size": 3, "rate": rate, "target": 0})
    model, _ = load_model(path)
    from backdoorlab.cli.inspect_data import training_set

    dataset, mask, goal, _ = training_set(train, load_ground_truth(truth_path(path)))
    return model.eval(), dataset, mask, goal, test


def run_setting(setting: str, cache: dict) -> dict:
    name, rate, epochs, bs, lr, re_epochs, eps = SETTINGS[setting]
    model, dataset, mask, goal, test = ensure_model(setting)
    out = cache.setdefault(setting, {})
    if "before" not in out:
        ev = evaluate(model, test, goal)
        y = dataset.tensors()[1]
        out["before"] = {"ca": ev.clean_accuracy, "asr": ev.attack_success_rate, "n": len(y),
                         "poison": int(mask.sum()), "target_fraction": float(mask[y == 0].double().mean())}
    for label, (san, do_retrain) in sanitizers(eps).items():
        row = out.setdefault(label, {})
        if "recall" not in row:
            t0 = time.perf_counter()
            s = san.scan(model, dataset)
            tp = int((s.flagged & mask).sum())
            row.update(flagged=int(s.flagged.sum()), precision=tp / max(int(s.flagged.sum()), 1),
                       recall=tp / int(mask.sum()), auroc=auroc(s.scores, mask),
                       scan_s=time.perf_counter() - t0, flags=torch.nonzero(s.flagged).flatten().tolist())
            save_cache(cache)
        if do_retrain and "ca" not in row:
            flagged = torch.zeros(len(mask), dtype=torch.bool)
            flagged[torch.tensor(row["flags"], dtype=torch.long)] = True
            t0 = time.perf_counter()
            new = retrain(model, dataset, flagged, epochs=re_epochs, batch_size=bs, lr=lr,
                          generator=torch.Generator().manual_seed(0))
            ev = evaluate(new, test, goal)
            row.update(ca=ev.clean_accuracy, asr=ev.attack_success_rate, retrain_s=time.perf_counter() - t0)
            save_cache(cache)
        print(f"{setting:11s} {label:55s} recall {row['recall']:.3f} precision {row['precision']:.3f}"
              + (f" CA {row['ca']:.4f} ASR {row['asr']:.4f}" if "ca" in row else ""), flush=True)
    return out


def save_cache(cache: dict) -> None:
    """One file per setting, so that settings can run in parallel processes."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for setting, out in cache.items():
        (CACHE / f"bench-{setting}.json").write_text(json.dumps(out))


def load_cache() -> dict:
    return {s: json.loads((CACHE / f"bench-{s}.json").read_text()) for s in SETTINGS
            if (CACHE / f"bench-{s}.json").exists()}


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def write_table(cache: dict, command: str) -> str:
    lines = ["# Training-set sanitizers (issue 5, training time)", "",
             f"Command: `{command}`  ", f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ",
             f"Machine: {machine()}; load average {load_avg()} — other developers' jobs shared the 2 cores.", "",
             "BadNets, 3x3 white square bottom-right, all-to-one -> 0.  'target fraction' = poisoned share of "
             "the target class.  Precision / recall of the flags against the poison indices; CA / ASR of a "
             "fresh model retrained on the kept samples (MNIST: 2 epochs, for CPU time; digits: 30); the "
             "MNIST 1.1% model was trained for 3 epochs, the 10% one for 6.  `-` = not retrained.", ""]
    for setting, out in cache.items():
        b = out.get("before")
        if not b:
            continue
        lines += [f"## {setting}: {b['poison']} poisoned of {b['n']} (target fraction {pct(b['target_fraction'])}); "
                  f"backdoored model CA {pct(b['ca'])}, ASR {pct(b['asr'])}", "",
                  "| sanitizer | flagged | precision | recall | AUROC | CA after | ASR after | scan s |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, r in out.items():
            if label == "before" or "recall" not in r:
                continue
            lines.append(f"| {label} | {r['flagged']} | {pct(r['precision'])} | {pct(r['recall'])} | "
                         f"{r['auroc']:.3f} | {pct(r.get('ca'))} | {pct(r.get('asr'))} | {r['scan_s']:.1f} |")
        lines.append("")
    lines += [
        "Papers / peers: spectral signatures removes (nearly) all poison at 5-10% of the target class, ASR "
        "after retraining about 0-1% (Tran et al. 2018, CIFAR-10); activation clustering close to 100% "
        "detection on MNIST (Chen et al. 2018).  BackdoorBench (CIFAR-10, PreAct-ResNet18, BadNets 10%): "
        "ASR after SS 92.41%, after AC 86.23%.", "",
        "## Which regime is a correct implementation in?", "",
        "It depends on the poisoned share *of the target class*, not on the implementation alone.", "",
        "* Papers' regime: the poison is a minority of its class (Tran et al.: 5-10% of the target class; "
        "Chen et al.: at most a third per class).  The class mean stays near the clean mean, so the poison is "
        "the one far end of the top singular direction (spectral signatures) and the smaller 2-means cluster "
        "(activation clustering).  Our planted-poison tests (9% of a class) find all of it with every rule.",
        "* BackdoorBench's regime (and our CLI default): all-to-one BadNets on 10% of the *whole* set makes the "
        "target class about half poison (MNIST: 6000 poisoned + 5923 clean 0s).  Then (i) the squared projection "
        "is symmetric — both clusters are equally far from the class mean (digits: mean projections -8.4 vs "
        "+8.6) — so removing 1.5 x 50% of the class still leaves a quarter of the poison (MNIST: recall 76%, "
        "ASR after retraining 53%); (ii) the two activation clusters have the same size, so 'smaller cluster' "
        "is a coin flip and 'relative size < 0.35' flags no poison, only small clean sub-clusters of other classes "
        "(rows 'AC, relative size' / 'silhouette').",
        "* BackdoorBench's spectral code also cuts at the 85th percentile of the target class only, i.e. "
        "1.5 x the *global* rate 10% = 15% of a class that is ~50% poison: at most 30% of the poison can go "
        "(our ε = 0.10 row: MNIST recall 11.7%, ASR after retraining 99.8% — their 92.41%).  It also projects "
        "the uncentred representations on v.  Their AC uses 'smaller cluster'.  Both numbers are what the "
        "papers' rules give when the poison is half the class.",
        "* What works in both regimes is the paper's third analysis, exclusionary reclassification (poison "
        "keeps its source-class content, so it is the cluster the model attributes to another label): our "
        "retraining-free version is the 'AC, exclusion' row.  Giving spectral signatures the same "
        "evidence ('SS oriented': signed projection towards the end the model attributes to other labels) "
        "also removes all the poison at 50%, but a uniform ε = 0.5 removes 75% of *every* class, and the "
        "clean classes lose whole modes (CA column).",
        "* The paper-regime MNIST rows (1.1% of the set = 10% of the target class) reproduce the papers: "
        "spectral signatures and activation clustering remove (nearly) all the poison and retraining gives "
        "ASR well under 1%.  Digits has only ~14 poisoned samples in that regime and is too small for the "
        "clustering to isolate them.",
        "* Not run (CPU time): the CIFAR-10 / GTSRB subsets, and BackdoorBench's PreAct-ResNet18.", ""]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated setting prefixes (digits, mnist, ...)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="only rewrite the table from the cached results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = load_cache()
    chosen = [s for s in SETTINGS if not args.only or any(s.startswith(p) for p in args.only.split(","))]
    command = "python benchmarks/sanitize.py" + (f" --only {args.only}" if args.only else "")
    if args.table:
        print(write_table(cache, "python benchmarks/sanitize.py (settings run as separate processes: "
                                 "--only digits, --only mnist-10%, --only mnist-1.)"))
        return 0
    for s in chosen:
        if s.startswith("mnist") and not (DATA / "mnist.npz").exists():
            print(f"{s}: skipped (no {DATA / 'mnist.npz'})")
            continue
        run_setting(s, cache)
        write_table({**load_cache(), **cache}, command)
    print(write_table({**load_cache(), **cache}, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
