"""``backdoorlab filter METHOD MODEL``: calibrate an inference-time input filter (``Guard``) on the
defender's clean set at ``--fpr`` and report FRR / FAR / AUROC on clean and stamped test inputs.

One sub-command per ``defenses.filter.FILTERS`` entry (strip, anomaly, nc-filter, ...), each with
one flag per hyper-parameter of its dataclass."""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from . import _common as c


def register(sub, groups) -> None:
    from ..defenses.filter import FILTERS

    grp = groups["filter"]
    for name, cls in FILTERS.items():
        if name in grp.choices:
            continue
        doc = (cls.__doc__ or name).strip().splitlines()[0]
        p = grp.add_parser(name, help=doc, description=doc)
        add_model_args(p, "the defender's clean set: half is the filter's clean pool, half calibrates")
        p.add_argument("--fpr", type=float, default=0.01,
                       help="false rejection rate preset on clean inputs (default 0.01)")
        p.add_argument("--n-test", type=int, default=2000,
                       help="clean and stamped test inputs evaluated, each (default 2000; 0 = all)")
        c.add_params(p, cls, skip=("seed",))
        p.set_defaults(func=cmd_filter, filter_name=name, filter_cls=cls)


def add_model_args(p: argparse.ArgumentParser, clean_help: str) -> None:
    """MODEL, --truth, the defender's clean set (--clean-fraction / --clean-per-class), common flags."""
    p.add_argument("model", help="model file (.safetensors with its .json sidecar)")
    p.add_argument("--truth", default=None, help="ground-truth file (default: MODEL.truth.safetensors if present)")
    p.add_argument("--clean-fraction", type=float, default=0.05,
                   help=f"fraction of the clean training split held by the defender (default 0.05); {clean_help}")
    p.add_argument("--clean-per-class", type=int, default=None,
                   help="instead of --clean-fraction: this many clean samples per class")
    c.add_common(p)


def clean_set(args: argparse.Namespace, train, g: torch.Generator):
    from ..data import clean_subset

    if args.clean_per_class:
        return clean_subset(train, per_class=args.clean_per_class, generator=g)
    return clean_subset(train, fraction=args.clean_fraction, generator=g)


def eval_inputs(test, goal, n: int, g: torch.Generator):
    """(clean x, stamped x, stamped targets): up to ``n`` of each, drawn with ``g`` (stamped only
    from classes the attacker relabels)."""
    from ..data import as_tensors
    from ..types import TriggerGoal

    x, y = as_tensors(test)
    perm = torch.randperm(len(x), generator=g)
    take = perm if n <= 0 else perm[:n]
    xs = ts = None
    if isinstance(goal, TriggerGoal):
        rel = perm[goal.relevant(y[perm])]
        rel = rel if n <= 0 else rel[:n]
        xs, ts = goal.apply(x[rel]), goal.target_for(y[rel])
    return x[take], y[take], xs, ts


def cmd_filter(args: argparse.Namespace) -> int:
    from .._stats import auroc, wilson_interval
    from .._torch import predict
    from ..data import as_tensors
    from ..defenses.filter import Guard

    name, cls = args.filter_name, args.filter_cls
    flt = cls(**with_seed(cls, c.params_from_args(args), args))
    model, meta = c.load_model(args, args.model)
    train, test = c.load_split(args, "train", meta), c.load_split(args, "test", meta)
    g = c.generator(args)
    clean = clean_set(args, train, g)
    xc = as_tensors(clean)[0][torch.randperm(len(clean), generator=g)]
    truth = c.ground_truth(args.model, args.truth)
    goal = truth[0] if truth else None
    t0 = time.perf_counter()
    guard = Guard.calibrate(flt, model, xc, fpr=args.fpr)
    t_cal = time.perf_counter() - t0
    x, y, xs, ts = eval_inputs(test, goal, args.n_test, g)
    t0 = time.perf_counter()
    sc = guard.scores(x)
    per_input = (time.perf_counter() - t0) / max(1, len(x))
    frr_k = int((sc > guard.threshold).sum())
    data = {"method": name, "params": _plain(flt), "fpr": args.fpr, "threshold": guard.threshold,
            "clean_pool": len(guard.clean_pool), "calibration": len(xc) - len(guard.clean_pool),
            "n_clean": len(x), "frr": frr_k / len(x), "frr_ci": wilson_interval(frr_k, len(x)),
            "calibration_seconds": round(t_cal, 3), "seconds_per_input": per_input}
    rows = [["threshold", f"{guard.threshold:.4g}"],
            ["FRR (clean test inputs withheld)", f"{c.pct(data['frr'])} of {len(x)}"]]
    notes = [f"calibrated on {data['calibration']} clean images (pool {data['clean_pool']}) at FPR {args.fpr:g}; "
             f"{1e3 * per_input:.2f} ms per input"]
    if xs is not None and len(xs):
        ss = guard.scores(xs)
        passed = ss <= guard.threshold
        hit = passed & (predict(model, xs) == ts.to(xs.device)).to(passed.device)
        far_k = int(passed.sum())
        data.update(n_stamped=len(xs), far=far_k / len(xs), far_ci=wilson_interval(far_k, len(xs)),
                    auroc=auroc(torch.cat([sc, ss]).cpu(), torch.cat([torch.zeros(len(sc)), torch.ones(len(ss))])),
                    asr_through_guard=float(hit.float().mean()))
        rows += [["FAR (stamped inputs let through)", f"{c.pct(data['far'])} of {len(xs)}"],
                 ["AUROC (clean vs stamped)", f"{data['auroc']:.4f}"],
                 ["ASR through the guard", c.pct(data["asr_through_guard"])]]
    else:
        notes.append("no ground-truth file: FAR / AUROC not measured (pass --truth).")
    c.emit(args, data, title=f"filter --method {name} on {test.info.name}", rows=rows,
           columns=["metric", "value"], notes=notes)
    return 0


def with_seed(cls, params: dict, args: argparse.Namespace) -> dict:
    """``--seed`` also seeds the method when its dataclass has a ``seed`` field."""
    if "seed" in {f.name for f in dataclasses.fields(cls)}:
        params = {**params, "seed": int(args.seed)}
    return params


def _plain(obj) -> dict:
    return {k: v for k, v in dataclasses.asdict(obj).items() if isinstance(v, (int, float, str, bool, type(None)))}
