"""Run one grid cell: train (or reuse) the attacked model, apply the defense, measure.

Intermediate artifacts are cached by content hash under ``cache_dir``: the trained model of a
(dataset, arch, attack, seed, train) tuple is shared by every defense cell that needs it, as
safetensors + JSON (never pickle).  Each cell runs with one torch thread so that local processes
and Ray workers compute bit-identical results.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import torch

from .grid import config_hash, role_of


def _trigger(spec: str, shape) -> Any:
    from ..triggers import PatchTrigger

    kind, _, arg = str(spec).partition(":")
    if kind == "pattern":
        return PatchTrigger.badnets_pattern(shape)
    if kind == "pixel":
        return PatchTrigger.single_pixel(shape)
    if kind == "square":
        return PatchTrigger.square(shape, int(arg or 3))
    raise ValueError(f"grid badnets trigger must be 'pattern', 'pixel' or 'square:N'; got {spec!r}.")


def _poison(cell: dict, train, g: torch.Generator):
    from ..attacks import ATTACKS

    atk = cell["attack"]
    if atk["method"] == "none":
        return train, None, None
    params = dict(atk["params"])
    if atk["method"] == "badnets":
        params["trigger"] = _trigger(params.pop("trigger", "pattern"), train.info.input_shape)
    p = ATTACKS[atk["method"]](**params).poison(train, generator=g)
    return p.dataset, p.goal, p.poison_indices


def model_path(cell: dict, cache_dir: str | Path) -> Path:
    """Where the cell's trained model is cached: its content hash over (dataset, arch, attack,
    seed, train), so every defense cell of that model shares it."""
    key = {k: cell[k] for k in ("dataset", "arch", "attack", "seed", "train")}
    return Path(cache_dir) / "models" / f"{config_hash(key)}.safetensors"


def poison(cell: dict, train):
    """(dataset, goal, poison indices) of the cell's attack, drawn exactly as its model's training
    draws them (generator seeded with the cell's seed, poisoning first)."""
    return _poison(cell, train, torch.Generator().manual_seed(cell["seed"]))


def _model(cell: dict, train, cache_dir: Path):
    """The attacked (or clean) model of this cell, trained once and cached by content hash."""
    from ..cli._common import TRAIN_DEFAULTS
    from ..io import load_ground_truth, load_model, save_ground_truth, save_model, truth_path
    from ..models import build
    from ..training import fit, init_weights

    path = model_path(cell, cache_dir)
    g = torch.Generator().manual_seed(cell["seed"])
    data, goal, idx = _poison(cell, train, g)
    if path.exists():
        model, _ = load_model(path)
        if goal is not None:
            goal, idx, _ = load_ground_truth(truth_path(path))
        return model, goal, data, idx, True
    info = train.info
    e, b, lr = TRAIN_DEFAULTS[info.name]
    t = {"epochs": e, "batch_size": b, "lr": lr, **cell["train"]}
    model = init_weights(build(cell["arch"], input_shape=info.input_shape, num_classes=info.num_classes,
                               mean=info.mean, std=info.std), g)
    fit(model, data, epochs=t["epochs"], batch_size=t["batch_size"], lr=t["lr"], generator=g)
    save_model(path, model, dataset=info.to_json(), training=t)
    if goal is not None:
        save_ground_truth(truth_path(path), goal, idx)
    return model, goal, data, idx, False


def reset_peak_memory() -> bool:
    """Reset this process's peak resident set size (Linux >= 4.0: ``/proc/self/clear_refs`` 5), so
    that ``ru_maxrss`` afterwards is the peak of what follows, not of every earlier cell that ran in
    the same worker process.  Returns False where unsupported (the peak is then the process's)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_cell(cell: dict, cache_dir: str | Path) -> dict:
    """Execute ``cell``; return its measured row (never raises: errors are recorded)."""
    reset_peak_memory()
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"status": "done", **_run(cell, Path(cache_dir)), "seconds": round(time.perf_counter() - t0, 3),
                "peak_mem_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    except Exception as e:  # a failed cell records its error and the grid goes on
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "seconds": round(time.perf_counter() - t0, 3)}
    finally:
        torch.set_num_threads(threads)


def _run(cell: dict, cache_dir: Path) -> dict:
    from ..data import clean_subset, load_dataset
    from ..metrics import evaluate

    train = load_dataset(cell["dataset"], "train", cell["data_dir"])
    test = load_dataset(cell["dataset"], "test", cell["data_dir"])
    model, goal, data, idx, cached = _model(cell, train, cache_dir)
    g = torch.Generator().manual_seed(cell["seed"] + 1)
    clean = clean_subset(train, fraction=cell["clean_fraction"], generator=g)
    before = evaluate(model, test, goal)
    row: dict[str, Any] = {"ca": before.clean_accuracy, "asr": before.attack_success_rate, "ra": before.robust_accuracy,
                           "model_cached": cached, "metrics": {}}
    method = cell["defense"]["method"]
    if method == "none":
        return row
    params = cell["defense"]["params"]
    role = role_of(method)
    m = row["metrics"]
    if role == "detector":
        from ..defenses.detect import DETECTORS

        v = DETECTORS[method](**params).detect(model, clean, generator=g)
        m.update(backdoored=bool(v.backdoored), score=float(v.score), suspects=list(v.suspects),
                 target_found=(goal is not None and getattr(goal, "target", None) in v.suspects))
    elif role == "mitigator":
        from ..defenses.mitigate import MITIGATORS

        rep = MITIGATORS[method](**params).repair(model, clean, generator=g)
        after = evaluate(rep.model, test, goal)
        m.update(ca_before=row["ca"], asr_before=row["asr"], ra_before=row["ra"])
        row.update(ca=after.clean_accuracy, asr=after.attack_success_rate, ra=after.robust_accuracy)
    elif role == "filter":
        from .._stats import auroc
        from ..defenses.filter import FILTERS, Guard

        pool = clean.x[torch.randperm(len(clean), generator=g)]
        guard = Guard.calibrate(FILTERS[method](**params), model, pool, fpr=cell["fpr"])
        xt = test.x[:1000]
        s_clean = guard.scores(xt)
        m.update(frr=float((s_clean > guard.threshold).float().mean()))
        if goal is not None:
            xs = goal.apply(test.x[goal.relevant(test.y)][:1000])
            s_bad = guard.scores(xs)
            m.update(far=float((s_bad <= guard.threshold).float().mean()),
                     auroc=auroc(torch.cat([s_clean, s_bad]), torch.cat([torch.zeros(len(s_clean)), torch.ones(len(s_bad))])))
    elif role == "sanitizer":
        from ..defenses.sanitize import SANITIZERS

        res = SANITIZERS[method](**params).scan(model, data)
        flagged = res.flagged.bool()
        m.update(flagged=int(flagged.sum()))
        if idx is not None:
            truth = torch.zeros(len(flagged), dtype=torch.bool)
            truth[idx] = True
            tp = int((flagged & truth).sum())
            m.update(recall=tp / max(1, int(truth.sum())), precision=tp / max(1, int(flagged.sum())))
    else:  # purifier
        from ..defenses.filter import PURIFIERS
        from ..metrics import attack_success_rate, clean_accuracy

        pur = PURIFIERS[method](**params)
        if hasattr(pur, "fit"):
            pur = pur.fit(model, clean, generator=g)
        xc = pur.purify(model, test.x)
        from ..data import ImageDataset

        row.update(ca=clean_accuracy(model, ImageDataset(xc, test.y)))
        if goal is not None:
            keep = goal.relevant(test.y)
            xs = pur.purify(model, goal.apply(test.x[keep]))
            from .._torch import predict

            pred = predict(model, xs)
            row.update(asr=float((pred == goal.target_for(test.y[keep])).float().mean()))
    return row
