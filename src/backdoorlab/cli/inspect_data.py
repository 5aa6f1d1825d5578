"""``backdoorlab inspect-data``: training-set sanitizers (issue 5, training time).

The model's training set is rebuilt from its ground-truth file (poison indices, trigger, target)
over the clean training split; without one, the clean split is scanned as it is.  Prints the
flagged count per class, precision / recall against the ground truth, and with ``--retrain`` the
CA / ASR of a fresh model trained on the kept samples (the seed's step 4)."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from . import _common as c

ORDER = ("spectral-signatures", "activation-clustering", "pca-outliers")


def register(sub, groups) -> None:
    from ..defenses.sanitize import SANITIZERS

    p = sub.add_parser("inspect-data", help="find poisoned training samples (spectral signatures, activation "
                       "clustering, PCA outliers); optionally retrain without them",
                       description=__doc__)
    p.add_argument("--model", required=True, help="model trained on the (possibly poisoned) training set")
    p.add_argument("--method", default="spectral-signatures", choices=[*SANITIZERS, "all"],
                   help="sanitizer (default spectral-signatures; 'all' runs every one)")
    p.add_argument("--truth", default=None, help="ground-truth file (default: MODEL.truth.safetensors if present)")
    p.add_argument("--retrain", action="store_true", help="train a fresh model on the kept samples; report CA/ASR")
    p.add_argument("-o", "--output", default=None, help="retrained model file (default MODEL.<method>.safetensors)")
    p.add_argument("--epochs", type=int, default=None, help="retraining epochs (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    c.add_common(p)
    seen: set[str] = {"batch_size", "seed"}  # --batch-size: retraining; --seed: common flag
    for name in SANITIZERS:
        fields = {f.name for f in dataclasses.fields(SANITIZERS[name])}
        c.add_params(p, SANITIZERS[name], skip=tuple(seen))
        seen |= fields
    p.set_defaults(func=cmd_inspect_data)


def training_set(train, truth):
    """(dataset the model was trained on, poison mask or None, goal or None, note)."""
    import torch

    from ..data import PoisonedDataset
    from ..types import TriggerGoal

    if truth is None:
        return train, None, None, "no ground-truth file: scanned the clean training split; precision/recall not measured"
    goal, idx, _ = truth
    if not isinstance(goal, TriggerGoal) or idx is None:
        return train, None, goal, ("the ground truth holds no trigger + poison indices: scanned the clean "
                                   "training split")
    if len(idx) and int(idx.max()) >= len(train):
        raise ValueError(f"the ground truth has poison index {int(idx.max())} but the training split has "
                         f"{len(train)} samples; pass the dataset the model was trained on.")
    relabel = goal.target_for(torch.arange(train.info.num_classes))
    poisoned = PoisonedDataset(train, idx, goal.trigger, relabel)
    return poisoned, poisoned.poison_mask, goal, f"rebuilt the poisoned training set ({len(idx)} poisoned samples)"


def _sanitizer(name: str, params: dict, seed: int):
    from ..defenses.sanitize import SANITIZERS

    cls = SANITIZERS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in params.items() if k in fields}
    if "seed" in fields:
        kw["seed"] = seed
    return cls(**kw)


def cmd_inspect_data(args: argparse.Namespace) -> int:
    import torch

    from .._stats import auroc
    from ..data import as_tensors
    from ..defenses.sanitize import SANITIZERS
    from ..metrics import evaluate

    model, meta = c.load_model(args, args.model)
    train = c.load_split(args, "train", meta)
    dataset, mask, goal, note = training_set(train, c.ground_truth(args.model, args.truth))
    methods = [m for m in ORDER if m in SANITIZERS] if args.method == "all" else [args.method]
    params = c.params_from_args(args)
    known = {f.name for m in methods for f in dataclasses.fields(SANITIZERS[m])}
    if set(params) - known:
        raise ValueError(f"--{sorted(set(params) - known)[0].replace('_', '-')} is not a parameter of "
                         f"{', '.join(methods)}.")
    _, y = as_tensors(dataset)
    K = train.info.num_classes
    per_class = {"samples": torch.bincount(y, minlength=K).tolist()}
    if mask is not None:
        per_class["poison"] = torch.bincount(y[mask], minlength=K).tolist()
    results, notes = {}, [note]
    test = c.load_split(args, "test", meta) if args.retrain else None
    before = evaluate(model, test, goal) if args.retrain else None
    for name in methods:
        sanitizer = _sanitizer(name, params, args.seed)
        t0 = time.perf_counter()
        scan = sanitizer.scan(model, dataset)
        res = {"params": {k: v for k, v in dataclasses.asdict(sanitizer).items()},
               "seconds": round(time.perf_counter() - t0, 3), "flagged": int(scan.flagged.sum()),
               "flagged_per_class": torch.bincount(y[scan.flagged], minlength=K).tolist()}
        if mask is not None:
            tp = int((scan.flagged & mask).sum())
            res.update(poison_flagged_per_class=torch.bincount(y[scan.flagged & mask], minlength=K).tolist(),
                       true_positives=tp, precision=tp / max(res["flagged"], 1),
                       recall=tp / max(int(mask.sum()), 1), auroc=auroc(scan.scores, mask))
        if args.retrain:
            res.update(_retrain(args, model, meta, dataset, scan.flagged, name, test, goal, before))
            notes.append(f"{name}: wrote {res['output']}")
        results[name] = res
    data = {"model": str(args.model), "dataset": train.info.name, "training_samples": len(y),
            "per_class": per_class, "methods": results}
    if before is not None:
        data["before"] = before.to_json()
    c.emit(args, data, title=f"inspect-data: {args.model} ({len(y)} training samples)",
           rows=_rows(per_class, results, mask is not None, before), columns=_columns(methods, mask is not None),
           notes=notes)
    return 0


def _retrain(args, model, meta, dataset, flagged, name, test, goal, before) -> dict:
    from ..defenses.sanitize import retrain
    from ..io import save_model
    from ..metrics import evaluate

    e, b, lr = c.TRAIN_DEFAULTS.get(test.info.name, (10, 128, 0.01))
    tr = meta.get("training", {}) or {}
    cfg = {"epochs": args.epochs or tr.get("epochs", e), "batch_size": args.batch_size or tr.get("batch_size", b),
           "lr": args.lr or tr.get("lr", lr), "optimizer": tr.get("optimizer", "sgd")}
    t0 = time.perf_counter()
    with c.progress(args, f"retrain ({name})") as cb:
        new = retrain(model, dataset, flagged, generator=c.generator(args), progress=cb, **cfg)
    seconds = time.perf_counter() - t0
    after = evaluate(new, test, goal)
    out = Path(args.output) if args.output and args.method != "all" else Path(args.model).with_name(
        Path(args.model).stem + f".{name}.safetensors")
    save_model(out, new, dataset=meta.get("dataset"), training={**cfg, "seconds": round(seconds, 3)},
               extra={"sanitized_from": str(args.model), "method": name, "removed": int(flagged.sum())})
    return {"output": str(out), "retrain": cfg, "retrain_seconds": round(seconds, 3), "after": after.to_json()}


def _columns(methods, truth: bool) -> list[str]:
    cols = ["class", "samples"] + (["poison"] if truth else [])
    for m in methods:
        cols += [f"{m} flagged"] + ([f"{m} poison flagged"] if truth else [])
    return cols


def _rows(per_class, results, truth: bool, before) -> list[list]:
    K = len(per_class["samples"])
    rows = []
    for k in range(K):
        row = [k, per_class["samples"][k]] + ([per_class["poison"][k]] if truth else [])
        for r in results.values():
            row += [r["flagged_per_class"][k]] + ([r["poison_flagged_per_class"][k]] if truth else [])
        rows.append(row)
    blank = [""] * (1 + int(truth))
    total = ["all", sum(per_class["samples"])] + ([sum(per_class["poison"])] if truth else [])
    for r in results.values():
        total += [r["flagged"]] + ([r["true_positives"]] if truth else [])
    rows.append(total)
    if truth:
        rows.append(["precision", *blank] + sum(([c.pct(r["precision"]), ""] for r in results.values()), []))
        rows.append(["recall", *blank] + sum(([c.pct(r["recall"]), ""] for r in results.values()), []))
    if before is not None:
        w = 2 if truth else 1
        for key, label in (("clean_accuracy", "CA after retrain"), ("attack_success_rate", "ASR after retrain")):
            row = [label, *blank]
            for r in results.values():
                row += [c.pct(r["after"][key])] + [""] * (w - 1)
            rows.append(row)
        rows.append(["CA / ASR before", *blank, c.pct(before.clean_accuracy), c.pct(before.attack_success_rate)]
                    + [""] * (len(results) * w - 2))
    return rows
