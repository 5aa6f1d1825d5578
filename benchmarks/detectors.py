"""Benchmark for issue 7: Neural Cleanse, DL-TND and DF-TND on one detection population, plus the
combined verdict.

Population: MNIST BadNets CNNs, 10 infected (targets 0..9; 3x3 / 4x4 squares, the BadNets 3x3
pattern and single pixels at several corners, one blended random-noise key) and 10 clean.  The models
below are trained once and cached in ``runs/detectors/`` (git-ignored), with each detector's
verdict per model (``NAME.verdicts.json``), so an interrupted run resumes; with
``--issue3-population`` the Neural Cleanse benchmark's ``benchmarks/population.py: population()``
(same recipe, other triggers; it was not trained yet when this benchmark ran) is used instead.  To fit the shared 2-core machine each model trains
for 2 epochs on a 12,000-image stratified MNIST subset (CA about 98%).

Each model goes through
  * Neural Cleanse with a 1% clean subset of the training split (600 images, its defaults),
  * DL-TND with ONE clean image per class (10 images, drawn from the same subset),
  * DF-TND with NO data (10 uniform-noise inputs),
and ``Combined`` (rule in ``defenses/detect/combined.py``) over the three verdicts.

    .venv/bin/python benchmarks/detectors.py --prepare      # train + cache the population only
    .venv/bin/python benchmarks/detectors.py                # everything; writes results/detectors.md
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from backdoorlab._stats import auroc  # noqa: E402
from backdoorlab.attacks import BadNets  # noqa: E402
from backdoorlab.data import clean_subset, load_dataset  # noqa: E402
from backdoorlab.defenses.detect import DETECTORS  # noqa: E402
from backdoorlab.defenses.detect.combined import Combined  # noqa: E402
from backdoorlab.io import load_ground_truth, load_model, save_ground_truth, save_model, truth_path  # noqa: E402
from backdoorlab.metrics import attack_success_rate, clean_accuracy  # noqa: E402
from backdoorlab.models import build  # noqa: E402
from backdoorlab.training import fit, init_weights  # noqa: E402
from backdoorlab.triggers import BlendTrigger, PatchTrigger  # noqa: E402
from backdoorlab.types import Verdict  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "runs" / "detectors"
SHAPE = (1, 28, 28)

# name -> (trigger spec, target); trigger spec: (kind, size, position)
INFECTED = {
    "square3-br-t0": (("square", 3, "bottom-right"), 0),
    "square3-tl-t1": (("square", 3, "top-left"), 1),
    "pattern-br-t2": (("pattern", 3, "bottom-right"), 2),
    "pattern-tr-t3": (("pattern", 3, "top-right"), 3),
    "pixel-br-t4": (("pixel", 1, "bottom-right"), 4),
    "pixel-bl-t5": (("pixel", 1, "bottom-left"), 5),
    "square4-bl-t6": (("square", 4, "bottom-left"), 6),
    "pattern-bl-t7": (("pattern", 3, "bottom-left"), 7),
    "blend-t8": (("blend", 0, ""), 8),
    "square3-tr-t9": (("square", 3, "top-right"), 9),
}
CLEAN = [f"clean-s{s}" for s in range(10)]
SUBSET, EPOCHS = 12000, 2

DETECTOR_NAMES = ("neural-cleanse", "dl-tnd", "df-tnd")


def make_trigger(spec):
    kind, size, pos = spec
    if kind == "square":
        return PatchTrigger.square(SHAPE, size, pos)
    if kind == "pattern":
        return PatchTrigger.badnets_pattern(SHAPE, pos)
    if kind == "pixel":
        return PatchTrigger.single_pixel(SHAPE, pos)
    return BlendTrigger.random_noise(SHAPE, alpha=0.2, generator=torch.Generator().manual_seed(1234))


def train_one(name: str, train) -> Path:
    path = CACHE / f"{name}.safetensors"
    if path.exists():
        return path
    seed = 1000 + (list(INFECTED) + CLEAN).index(name)
    g = torch.Generator().manual_seed(seed)
    sub = clean_subset(train, fraction=SUBSET / len(train), generator=g)
    ds, goal, idx = sub, None, None
    if name in INFECTED:
        spec, target = INFECTED[name]
        poisoned = BadNets(trigger=make_trigger(spec), target=target, rate=0.1).poison(sub, generator=g)
        ds, goal, idx = poisoned.dataset, poisoned.goal, poisoned.poison_indices
    info = train.info
    model = init_weights(build("badnets-cnn", input_shape=info.input_shape, num_classes=10,
                               mean=info.mean, std=info.std), g)
    log = fit(model, ds, epochs=EPOCHS, batch_size=64, lr=0.05, generator=g)
    CACHE.mkdir(parents=True, exist_ok=True)
    save_model(path, model.eval(), dataset=info.to_json(), training=log.to_json(), extra={"population": name})
    if goal is not None:
        save_ground_truth(truth_path(path), goal, idx, info={"attack": "badnets", "population": name})
    return path


def population(train, shard: tuple[int, int] = (0, 1), *, issue3: bool = False, train_missing: bool = True):
    """[(name, model, goal or None)]: ours (cached in runs/detectors/), or with ``issue3`` the Neural
    Cleanse benchmark's ``benchmarks/population.py: population()``."""
    spec = ROOT / "benchmarks" / "population.py"
    if issue3 and spec.exists():
        mod_spec = importlib.util.spec_from_file_location("population", spec)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        return [(m.name, m.model.eval(), m.goal) for m in mod.population()]
    out = []
    for i, name in enumerate(list(INFECTED) + CLEAN):
        if i % shard[1] != shard[0]:
            continue
        path = CACHE / f"{name}.safetensors"
        if not path.exists() and not train_missing:
            continue
        path = train_one(name, train)
        model = load_model(path)[0].eval()
        goal = load_ground_truth(truth_path(path))[0] if name in INFECTED else None
        out.append((name, model, goal))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", action="store_true", help="only train and cache the population")
    ap.add_argument("--shard", default="0/1", help="I/N: this process handles models i with i %% N == I")
    ap.add_argument("--set", dest="settings", action="append", default=[],
                    help="DETECTOR.FIELD=VALUE overrides, e.g. neural-cleanse.epochs=10")
    ap.add_argument("--detectors", default=",".join(DETECTOR_NAMES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="do not write results/detectors.md")
    ap.add_argument("--issue3-population", action="store_true",
                    help="use benchmarks/population.py:population() (issue 3) instead of our population")
    ap.add_argument("--only-ready", action="store_true", help="evaluate only models already trained")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shard = tuple(int(v) for v in args.shard.split("/"))
    train, test = load_dataset("mnist", "train", DATA), load_dataset("mnist", "test", DATA)
    pop = population(train, shard, issue3=args.issue3_population, train_missing=not args.only_ready)
    if args.prepare:
        print(f"population ready: {len(pop)} models in {CACHE}")
        return 0
    names = [n for n in args.detectors.split(",") if n]
    overrides: dict[str, dict] = {}
    for s in args.settings:
        key, _, value = s.partition("=")
        det, _, field = key.partition(".")
        overrides.setdefault(det, {})[field.replace("-", "_")] = float(value) if "." in value else int(value)
    dets = {n: DETECTORS[n](**overrides.get(n, {})) for n in names}
    combined = Combined(detectors=tuple(dets.items()))
    eval_x = test.subset(torch.arange(2000))
    records = []
    for name, model, goal in pop:
        cache = CACHE / f"{name}.verdicts.json"
        done = json.loads(cache.read_text()) if cache.exists() else {}
        g = torch.Generator().manual_seed(7)
        clean = clean_subset(train, fraction=0.01, generator=g)
        rec = done.get("_model") or {
            "name": name, "infected": goal is not None, "target": getattr(goal, "target", None),
            "ca": clean_accuracy(model, eval_x),
            "asr": attack_success_rate(model, goal, eval_x) if goal is not None else None}
        done["_model"] = rec
        for dn, det in dets.items():
            key = f"{dn}:{json.dumps(overrides.get(dn, {}), sort_keys=True)}"
            if key not in done:
                t0 = time.perf_counter()
                data = None if getattr(det, "data_free", False) else clean
                v = det.detect(model, data, generator=torch.Generator().manual_seed(0))
                done[key] = {"backdoored": v.backdoored, "score": v.score, "threshold": v.threshold,
                             "suspects": list(v.suspects), "seconds": time.perf_counter() - t0}
                cache.write_text(json.dumps(done, indent=1))
        verdicts = {dn: Verdict(**{k: (tuple(v) if k == "suspects" else v) for k, v in done[
            f"{dn}:{json.dumps(overrides.get(dn, {}), sort_keys=True)}"].items() if k != "seconds"})
            for dn in dets}
        seconds = {dn: done[f"{dn}:{json.dumps(overrides.get(dn, {}), sort_keys=True)}"]["seconds"] for dn in dets}
        singles = dict(verdicts)
        verdicts["combined"] = combined.combine(singles)
        for rule in ("vote", "all"):
            verdicts[f"combined-{rule}"] = Combined(detectors=tuple(dets.items()), rule=rule).combine(singles)
        total = sum(seconds.values())
        seconds.update({k: total for k in verdicts if k.startswith("combined")})
        records.append({**rec, "verdicts": verdicts, "seconds": seconds})
        print(name, {k: (v.backdoored, v.suspects, round(v.score, 3)) for k, v in verdicts.items()},
              {k: round(v, 1) for k, v in seconds.items()}, flush=True)
    body = report(records, list(dets) + ["combined", "combined-vote", "combined-all"], overrides)
    from _util import write_result

    if shard == (0, 1) and not args.no_write:
        print(write_result("detectors", body))
    print(body)
    return 0


def report(records, names, overrides) -> str:
    from _util import md_table

    inf = [r for r in records if r["infected"]]
    cln = [r for r in records if not r["infected"]]
    rows = []
    for n in names:
        det = sum(r["verdicts"][n].backdoored for r in inf)
        tgt = sum(r["verdicts"][n].backdoored and r["target"] in r["verdicts"][n].suspects[:1] for r in inf)
        fp = sum(r["verdicts"][n].backdoored for r in cln)
        scores = torch.tensor([r["verdicts"][n].score for r in records])
        labels = torch.tensor([r["infected"] for r in records])
        sec = sum(r["seconds"][n] for r in records) / len(records)
        rows.append([n, f"{det}/{len(inf)} ({100 * det / max(1, len(inf)):.0f}%)", f"{fp}/{len(cln)}",
                     f"{tgt}/{len(inf)}", f"{auroc(scores, labels):.3f}", f"{sec:.1f}"])
    per = [[r["name"], f"{100 * r['ca']:.1f}", "-" if r["asr"] is None else f"{100 * r['asr']:.1f}",
            *[("**B**" if r["verdicts"][n].backdoored else "c") + (f" {list(r['verdicts'][n].suspects)}"
              if r["verdicts"][n].suspects else "") + f" ({r['verdicts'][n].score:.2f})" for n in names]]
           for r in records]
    return "\n\n".join([
        "## Detection population: Neural Cleanse vs DL-TND vs DF-TND (MNIST)",
        f"{len(inf)} infected + {len(cln)} clean MNIST BadNets CNNs. NC: 1% clean training subset; DL-TND: one "
        "clean image per class; DF-TND: no data (10 uniform-noise inputs). Target accuracy = infected models "
        "whose top suspect is the true target. Seconds per model on the shared 2-core CPU (other developers' "
        "jobs ran at the same time, so times are indicative only). Overrides: "
        f"{overrides or 'none (defaults)'}. "
        "combined = `Combined()` (rule `lead`: the data-richest detector that ran decides); combined-vote = "
        "at least half of the detectors flag (1 of 2 here, i.e. any); combined-all = every detector flags.",
        md_table(["detector", "detection rate", "false positives", "target accuracy", "AUROC", "s / model"], rows),
        "Paper (Wang et al., ECCV 2020) reports DL-TND / DF-TND on CIFAR-10, GTSRB and ImageNet, not MNIST; "
        "its per-model numbers were not retrieved (see ../shared/notes/performance-anchors.md (h)).",
        "### Per model (verdict [suspects] (score))",
        md_table(["model", "CA %", "ASR %", *names], per),
    ])


if __name__ == "__main__":
    sys.exit(main())
