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
    # the BadNets model of benchmarks/_filter_common.py (4x4 square -> 0, 10%): class 0 has only 70
    # clean images in the subset, so it is ~95% poison
    "gtsrb-10%": ("gtsrb", 0.10, 8, 128, 0.02, 4, 0.95),
    # papers' regime on GTSRB: 75 poisoned = 10% of the largest class (2, 750 images), 4x4 square
    "gtsrb-0.57%": ("gtsrb", 75 / 13070, 8, 128, 0.02, 4, 0.1),
}
# setting -> (trigger side, target) where not the 3x3 square -> 0
TRIGGER = {"gtsrb-0.57%": (4, 2), "gtsrb-0.57%+8": (4, 2)}
# setting -> (setting whose model is trained further, extra epochs, lr); scanned only, not retrained
CONTINUED = {"gtsrb-0.57%+8": ("gtsrb-0.57%", 8, 0.01)}
SETTINGS["gtsrb-0.57%+8"] = SETTINGS["gtsrb-0.57%"][:5] + (0,) + SETTINGS["gtsrb-0.57%"][6:]


# spectral signatures' direction and scores, oriented and cut at the gap of the signed projection, only
# in classes whose candidates the model attributes to other labels; ε = 1.0: no bound on the poison share
SS_EXCLUSION = SpectralSignatures(poison_fraction=1.0, orient=True, cut="split", min_gap=1.5)


def sanitizers(eps: float) -> dict:
    """label -> (sanitizer, retrain?)"""
    return {  # most important first: a run cut short still has them
        "SS, ε = 0.10 (BackdoorBench: 1.5 x 10% of the class)": (SpectralSignatures(poison_fraction=0.1), True),
        f"SS, ε = {eps:.2f} (in-class poison bound)": (SpectralSignatures(poison_fraction=eps),
                                                         eps != 0.1 and 1.5 * eps < 1),
        "AC, exclusion (default)": (ActivationClustering(), True),
        "SS + exclusion (orient, cut=split, min_gap=1.5, no ε)": (SS_EXCLUSION, True),
        f"SS oriented, ε = {eps:.2f} (orient=True)": (SpectralSignatures(poison_fraction=eps, orient=True),
                                                       1.5 * eps < 1),
        "PCA outliers (seed 000)": (PCAOutliers(), True),
        "AC, relative size": (ActivationClustering(analysis="relative-size"), False),
        "AC, silhouette + smaller cluster (ART)": (ActivationClustering(analysis="silhouette"), False),
        "none (reference: same retraining, nothing removed)": (None, True),
    }


def ensure_model(setting: str):
    """(model, poisoned dataset, poison mask, goal, test); trains and caches the model once,
    exactly as ``backdoorlab attack badnets --trigger square --size 3 --target 0 --seed 0``."""
    name, rate, epochs, bs, lr, _, _ = SETTINGS[setting]
    data_dir = None if name == "digits" else DATA
    if setting == "gtsrb-10%":
        from _filter_common import badnets_model, model_path  # the filter benchmarks' cached GTSRB model

        from backdoorlab.cli.inspect_data import training_set

        model, goal, train, test = badnets_model("gtsrb")
        dataset, mask, goal, _ = training_set(train, load_ground_truth(truth_path(model_path("gtsrb"))))
        return model.eval(), dataset, mask, goal, test
    train, test = load_dataset(name, "train", data_dir), load_dataset(name, "test", data_dir)
    path = CACHE / ("mnist-badnets-square.safetensors" if setting == "mnist-10%" else f"{setting}.safetensors")
    if setting in CONTINUED and not path.exists():
        base, more, lr2 = CONTINUED[setting]
        model, poisoned_ds, _, _, _ = ensure_model(base)
        log = fit(model.train(), poisoned_ds, epochs=more, batch_size=bs, lr=lr2,
                  generator=torch.Generator().manual_seed(1))
        save_model(path, model, dataset=train.info.to_json(), training=log.to_json())
        import shutil

        shutil.copyfile(truth_path(CACHE / f"{base}.safetensors"), truth_path(path))
    if not path.exists():
        g = torch.Generator().manual_seed(0)
        side, target = TRIGGER.get(setting, (3, 0))
        trig = PatchTrigger.square(train.info.input_shape, side, "bottom-right", 1.0)
        poisoned = BadNets(trigger=trig, target=target, rate=rate).poison(train, generator=g)
        info = train.info
        arch = "badnets-cnn" if name == "gtsrb" else DEFAULT_ARCH[name]   # as the filter benchmarks' GTSRB model
        model = init_weights(build(arch, input_shape=info.input_shape,
                                   num_classes=info.num_classes, mean=info.mean, std=info.std), g)
        log = fit(model, poisoned.dataset, epochs=epochs, batch_size=bs, lr=lr, generator=g)
        save_model(path, model, dataset=info.to_json(), training=log.to_json())
        save_ground_truth(truth_path(path), poisoned.goal, poisoned.poison_indices,
                          info={"attack": "badnets", "trigger": "square", "size": side, "rate": rate,
                                "target": target})
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
                         "poison": int(mask.sum()), "target_fraction": float(mask[y == goal.target].double().mean())}
    for label, (san, do_retrain) in sanitizers(eps).items():
        row = out.setdefault(label, {})
        if "recall" not in row and san is None:       # the reference: same retraining, nothing removed
            row.update(flagged=0, precision=0.0, recall=0.0, auroc=0.5, scan_s=0.0, flags=[])
        if "recall" not in row:
            t0 = time.perf_counter()
            s = san.scan(model, dataset)
            tp = int((s.flagged & mask).sum())
            row.update(flagged=int(s.flagged.sum()), precision=tp / max(int(s.flagged.sum()), 1),
                       recall=tp / int(mask.sum()), auroc=auroc(s.scores, mask),
                       scan_s=time.perf_counter() - t0, flags=torch.nonzero(s.flagged).flatten().tolist())
            save_cache(cache, setting)
        if do_retrain and re_epochs and "ca" not in row:
            flagged = torch.zeros(len(mask), dtype=torch.bool)
            flagged[torch.tensor(row["flags"], dtype=torch.long)] = True
            t0 = time.perf_counter()
            new = retrain(model, dataset, flagged, epochs=re_epochs, batch_size=bs, lr=lr,
                          generator=torch.Generator().manual_seed(0))
            ev = evaluate(new, test, goal)
            row.update(ca=ev.clean_accuracy, asr=ev.attack_success_rate, retrain_s=time.perf_counter() - t0)
            save_cache(cache, setting)
        print(f"{setting:11s} {label:55s} recall {row['recall']:.3f} precision {row['precision']:.3f}"
              + (f" CA {row['ca']:.4f} ASR {row['asr']:.4f}" if "ca" in row else ""), flush=True)
    return out


def save_cache(cache: dict, setting: str) -> None:
    """One file per setting (only ``setting``'s is written), so settings can run in parallel processes."""
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"bench-{setting}.json").write_text(json.dumps(cache[setting]))


def load_cache() -> dict:
    return {s: json.loads((CACHE / f"bench-{s}.json").read_text()) for s in SETTINGS
            if (CACHE / f"bench-{s}.json").exists()}


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def write_table(cache: dict, command: str) -> str:
    lines = ["# Training-set sanitizers (issue 5, training time)", "",
             f"Command: `{command}`  ", f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ",
             f"Machine: {machine()}; load average {load_avg()} — other developers' jobs shared the 2 cores.", "",
             "BadNets, white square bottom-right (3x3 on digits / MNIST, 4x4 on GTSRB), all-to-one -> 0 "
             "(GTSRB-0.57%: -> 2).  'target fraction' = poisoned share of "
             "the target class.  Precision / recall of the flags against the poison indices; CA / ASR of a "
             "fresh model retrained on the kept samples (MNIST: 2 epochs, for CPU time; digits: 30; GTSRB: 4); the "
             "MNIST 1.1% model was trained for 3 epochs, the 10% one for 6; GTSRB-10% for 16 (8 + 8 at lr "
             "0.01, by the filter benchmarks), GTSRB-0.57% for 8 (+8: 8 more at lr 0.01).  `-` = not "
             "retrained (or every sample flagged).  'none' = the same retraining on everything (the reference).  "
             "GTSRB-10% is the BadNets model of the filter benchmarks (4x4 square -> 0).", ""]
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
        "It depends on the poisoned share *of the target class* (and on the backdoor being learned), not on "
        "the implementation alone.", "",
        "* Papers' regime (MNIST 1.1% of the set = 10% of the target class): the poison is a minority of its "
        "class, the class mean stays near the clean mean, and the poison is the one far end of the top singular "
        "direction and the smaller 2-means cluster.  The paper's rule (remove 1.5 x 10% of every class) removes "
        "98.6% of the poison and retraining gives ASR 0.22%; activation clustering 99.85% / ASR 0.13% — the "
        "papers' near-perfect removal.  The 'none' row (same 2-epoch retraining on everything: ASR 81%) shows "
        "that the drop comes from the removal.",
        "* BackdoorBench's regime (all-to-one on 10% of the *whole* set; our CLI default): the MNIST target class "
        "is 50% poison (6000 + 5923 clean 0s).  The squared projection is symmetric and both halves are equally "
        "far from the class mean (within-class AUROC of τ 0.48), so removing 1.5 x 50% of the class still leaves "
        "a quarter of the poison (recall 76%, ASR after retraining 53%).  BackdoorBench cuts 1.5 x the *global* "
        "rate, 15% of the class: our ε = 0.10 row gives recall 11.7% and ASR 99.8% after retraining (their "
        "CIFAR-10 92.41%).  Activation clustering with the size rules ('smaller cluster', as BackdoorBench; "
        "'relative size < 0.35') removes none of it — the two clusters have the same size (their 86.23%).  So "
        "the public benchmark's numbers are what correct implementations of the papers' rules give when the "
        "poison is half the class; they are not implementation bugs.",
        "* The fix within the methods is to tell the two halves apart by what the poison keeps: its source-class "
        "content (the paper's exclusionary-reclassification argument).  'AC, exclusion' (our default) takes the "
        "cluster the model attributes to another label: MNIST 99.7% recall, ASR 0.17%.  'SS + exclusion' keeps "
        "spectral signatures' top singular direction but (i) orients it towards other-label evidence (signed "
        "projection: within-class AUROC 1.00 vs 0.48), (ii) cuts at the gap of that projection (1-D 2-means) "
        "instead of a fixed 1.5 ε, and (iii) cuts only classes whose candidates differ from the rest by >= 1.5 "
        "pooled SDs of that evidence: MNIST 10% recall 99.4%, precision 99.7%, CA 98.66%, ASR 0.22%; 1.1% recall "
        "100%, ASR 0.14% — with no poison rate given.  The paper's rule stays the default "
        "(`SpectralSignatures()`); the preset is `SpectralSignatures(poison_fraction=1.0, orient=True, "
        "cut='split', min_gap=1.5)`.  'SS oriented, ε = 0.5' without the class gate also removes all the poison "
        "but 75% of every clean class (CA 67%).",
        "* GTSRB subset, 10% of the set -> class 0: class 0 has only 70 clean images, so it is 95% poison from 42 "
        "source classes.  Now the *clean* images are the outliers (within-class AUROC of τ 0.13: spectral "
        "signatures ranks the clean 0s as most suspicious), the top direction splits the poison by source class, "
        "and no sanitizer removes it (ASR after retraining 86-92%, like the 'none' row).  The exclusion gate "
        "calibrated on MNIST (1.5 SDs) is not transferable either: this GTSRB model's clean classes differ by "
        "1.6-3.4 SDs between the two ends of their top direction, so 'SS + exclusion' cut 3989 clean images "
        "(CA 51.7%) and none of the poison.  Retraining here is 4 epochs (CA of the 'none' row 77.6% vs 87.8% "
        "for the 16-epoch model), so compare CA within the table.",
        "* GTSRB subset, papers' regime (75 poisoned = 10% of class 2, 4x4 square): 8 epochs implant only a "
        "weak backdoor (ASR 41.9%), and with it a weak signature: the paper's spectral rule removes 37% of the "
        "poison (AUROC 0.62), per-class PCA 45%, activation clustering none; the oriented variants point the "
        "wrong way (AUROC 0.26) — the exclusion argument needs a backdoor the model has learned.  Retraining "
        "for 4 epochs on everything gives ASR 4.4% ('none'), so that table's ASR column says nothing about "
        "the sanitizers.  8 more epochs at lr 0.01 ('gtsrb-0.57%+8', scanned only) raise ASR to 53.9% and "
        "change little: spectral 30.7%, PCA 44.0%, activation clustering 0%.  These runs do not reproduce the "
        "papers' near-perfect removal on GTSRB: with 75 poisoned images this small CNN has not learned the "
        "backdoor well enough to give it a separate representation (ASR < 54%).",
        "* Not run (CPU time): CIFAR-10 and BackdoorBench's PreAct-ResNet18.", ""]
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
                                 "--only digits, --only mnist, --only gtsrb-10%, --only gtsrb-0, --only gtsrb-0.57%+)"))
        return 0
    for s in chosen:
        npz = {"mnist": "mnist.npz", "gtsrb": "gtsrb_subset.npz"}.get(SETTINGS[s][0])
        if npz and not (DATA / npz).exists():
            print(f"{s}: skipped (no {DATA / npz})")
            continue
        run_setting(s, cache)
        write_table({**load_cache(), s: cache[s]}, command)
    print(write_table(load_cache(), command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
