"""``backdoorlab certify {smoothing,knn,dpa,sphere-slab,rab}``: certified defenses (issue 9).

Tables by default, ``--json`` for machines, ``--plot PNG`` for certified accuracy vs radius /
poisoning size (matplotlib, imported only then).  The data-only certifiers (knn, dpa, sphere-slab,
rab) take an optional MODEL only to know its dataset.
"""
from __future__ import annotations

import argparse
import time

import torch

from ._common import add_common, add_params, emit, generator, load_model, load_split, params_from_args, pct, progress


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def register(sub, groups) -> None:
    from ..certify.dpa import DeepPartitionAggregation
    from ..certify.knn import CertifiedKNN, CertifiedRNN
    from ..certify.rab import RABEnsemble
    from ..certify.smoothing import RandomizedSmoothing
    from ..certify.sphere_slab import SphereSlabBound

    g = groups["certify"]
    p = g.add_parser("smoothing", help="randomized smoothing (Cohen et al.): certified L2 radius per test input")
    p.add_argument("model", help="model file (ideally trained with Gaussian noise at the same sigma)")
    p.add_argument("--test", type=int, default=100, help="test images to certify (default 100)")
    p.add_argument("--radii", type=_floats, default=[0.0, 0.25, 0.5, 1.0])
    p.add_argument("--patch-sizes", type=_ints, default=None, help="patch sizes for the backdoor reading "
                   "(default 3,5 on 1-channel data, 3,5,10 otherwise)")
    _common(p)
    add_params(p, RandomizedSmoothing)
    p.set_defaults(func=_smoothing)

    p = g.add_parser("knn", help="certified kNN / rNN against poisoning (Jia et al. AAAI 2022)")
    p.add_argument("model", nargs="?", default=None, help="optional model file (only its dataset is used)")
    p.add_argument("--r", type=float, default=None, help="radius: use rNN instead of kNN")
    p.add_argument("--unit", default="operations", choices=["operations", "insert-delete"], help="rNN unit")
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--sizes", type=_ints, default=None, help="poisoning sizes for the table")
    _common(p)
    add_params(p, CertifiedKNN, skip=("batch_size",))
    p.set_defaults(func=_knn, k_cls=(CertifiedKNN, CertifiedRNN))

    p = g.add_parser("dpa", help="Deep Partition Aggregation (Levine & Feizi ICLR 2021)")
    p.add_argument("model", nargs="?", default=None, help="optional model file (only its dataset is used)")
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--sizes", type=_ints, default=None)
    p.add_argument("--compare-sequential", action="store_true",
                   help="also train the members one after another and report the speed-up")
    _common(p)
    add_params(p, DeepPartitionAggregation, skip=("mode", "seed"))
    p.set_defaults(func=_dpa)

    p = g.add_parser("sphere-slab", help="Steinhardt et al. 2017: upper bound U* vs eps for a linear SVM")
    p.add_argument("model", nargs="?", default=None, help="optional model file (only its dataset is used)")
    p.add_argument("--classes", type=_ints, default=[1, 7], help="negative,positive class (default 1,7)")
    p.add_argument("--eps", type=_floats, default=[0.0, 0.05, 0.1, 0.2, 0.3])
    _common(p)
    add_params(p, SphereSlabBound)
    p.set_defaults(func=_sphere_slab)

    p = g.add_parser("rab", help="RAB (Weber et al.): training-smoothing ensemble, or its exact 1-NN form")
    p.add_argument("model", nargs="?", default=None, help="optional model file (only its dataset is used)")
    p.add_argument("--classes", type=_ints, default=[1, 7], help="class 0, class 1 (default 1,7)")
    p.add_argument("--exact-1nn", action="store_true", help="the exact 1-NN form instead of the ensemble")
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--radii", type=_floats, default=[0.0, 0.2, 0.5, 1.0])
    _common(p)
    add_params(p, RABEnsemble, skip=("seed",))
    p.set_defaults(func=_rab)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plot", default=None, metavar="PNG", help="write a certified-accuracy plot (needs matplotlib)")
    add_common(p)


def _data(args, meta=None):
    train, test = load_split(args, "train", meta), load_split(args, "test", meta)
    n = min(args.test, len(test)) if hasattr(args, "test") else len(test)
    sel = torch.randperm(len(test), generator=generator(args))[:n].sort().values
    return train, test.x[sel], test.y[sel]


def _meta(args):
    if getattr(args, "model", None):
        from ..io import load_json, sidecar_path

        return load_json(sidecar_path(args.model))
    return None


def _plot(path, curves: dict, xlabel: str, title: str) -> None:
    if not path:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install 'backdoorlab[plot]'") from e
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("certified accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _smoothing(args) -> int:
    from ..certify.smoothing import RandomizedSmoothing, patch_certified_fraction
    from ..triggers import PatchTrigger

    model, meta = load_model(args, args.model)
    _, x, y = _data(args, meta)
    rs = RandomizedSmoothing(**params_from_args(args))
    t0 = time.perf_counter()
    with progress(args, "certify (smoothing)") as cb:
        cert = rs.certify(model, x, generator=generator(args), progress=cb)
    sec = time.perf_counter() - t0
    curve = [(r, cert.certified_accuracy(y, r)) for r in args.radii]
    sizes = args.patch_sizes or ([3, 5] if x.shape[1] == 1 else [3, 5, 10])
    patches = [patch_certified_fraction(cert, x, s, PatchTrigger.square(tuple(x.shape[1:]), s, "bottom-right"))
               for s in sizes]
    _plot(args.plot, {f"sigma={rs.sigma}": curve}, "L2 radius", "randomized smoothing")
    data = {"method": "smoothing", "params": vars(rs), "test_images": len(x), "seconds": round(sec, 2),
            "certified_accuracy": {str(r): a for r, a in curve}, "patches": patches,
            "abstained": int((cert.prediction < 0).sum())}
    rows = [[f"radius {r}", pct(a)] for r, a in curve]
    rows += [[f"{p['size']}x{p['size']} white patch (median L2 {p['trigger_norm_median']:.2f})",
              pct(p["certified_trigger"])] for p in patches]
    rows += [[f"any {p['size']}x{p['size']} patch (up to L2 {p['max_patch_norm']:.1f})", pct(p["certified_any_patch"])]
             for p in patches]
    emit(args, data, title=f"certify smoothing: sigma={rs.sigma}, n={rs.n}, alpha={rs.alpha} ({sec:.1f} s)",
         rows=rows, columns=["certified", "fraction of test inputs"],
         notes=[f"median certified radius {float(cert.radius.median()):.3f}; each certificate holds with "
                f"probability 1 - {rs.alpha}.",
                "Weak for backdoors: a full-intensity k x k patch moves an image by up to k*sqrt(C) in L2, "
                "far beyond typical smoothing radii."])
    return 0


def _knn(args) -> int:
    knn_cls, rnn_cls = args.k_cls
    train, x, y = _data(args, _meta(args))
    params = params_from_args(args)
    cert_obj = rnn_cls(r=args.r, unit=args.unit) if args.r else knn_cls(**params)
    t0 = time.perf_counter()
    with progress(args, "certify (knn)") as cb:
        cert = cert_obj.certify(train.x, train.y, x, num_classes=train.info.num_classes, progress=cb)
    sec = time.perf_counter() - t0
    sizes = args.sizes or _default_sizes(cert.tolerance)
    curve = cert.curve(y, sizes)
    label = f"rNN r={args.r}" if args.r else f"kNN k={cert_obj.k}"
    _plot(args.plot, {label: curve}, "poisoned training samples", "certified kNN / rNN")
    data = {"method": "knn", "certifier": label, "unit": cert.unit, "test_images": len(x),
            "seconds": round(sec, 2), "curve": curve, "median_tolerance": cert.median_tolerance(y)}
    emit(args, data, title=f"certify knn: {label} on {len(train)} training images ({sec:.1f} s)",
         rows=[[e, pct(a)] for e, a in curve], columns=["poisoned samples e", "certified accuracy"],
         notes=[f"unit: {cert.unit}; median certified tolerance {cert.median_tolerance(y)}."])
    return 0


def _default_sizes(tol: torch.Tensor) -> list[int]:
    top = max(1, int(tol.max()))
    return sorted({0, *[max(1, round(top * f)) for f in (0.1, 0.25, 0.5, 0.75, 1.0)]})


def _dpa(args) -> int:
    from ..certify.dpa import DeepPartitionAggregation

    train, x, y = _data(args, _meta(args))
    dpa = DeepPartitionAggregation(**params_from_args(args), seed=args.seed)
    with progress(args, "train DPA members together") as cb:
        ens = dpa.train(train.x, train.y, num_classes=train.info.num_classes, progress=cb)
    cert = dpa.certify(train.x, train.y, x, ensemble=ens)
    base = float((ens.member_predictions(x) == y).float().mean())
    data = {"method": "dpa", "params": vars(dpa), "test_images": len(x), "seconds_together": round(ens.seconds, 2),
            "accuracy": float((cert.prediction == y).float().mean()), "base_accuracy": base,
            "median_tolerance": cert.median_tolerance(y)}
    if args.compare_sequential:
        seq = DeepPartitionAggregation(**params_from_args(args), seed=args.seed, mode="sequential")
        with progress(args, "train DPA members one after another") as cb:
            ens2 = seq.train(train.x, train.y, num_classes=train.info.num_classes, progress=cb)
        cert2 = seq.certify(train.x, train.y, x, ensemble=ens2)
        data.update(seconds_sequential=round(ens2.seconds, 2), speedup=round(ens2.seconds / ens.seconds, 2),
                    accuracy_sequential=float((cert2.prediction == y).float().mean()))
    sizes = args.sizes or _default_sizes(cert.tolerance)
    curve = cert.curve(y, sizes)
    data["curve"] = curve
    _plot(args.plot, {f"DPA k={dpa.partitions}": curve}, "inserted/deleted samples", "Deep Partition Aggregation")
    notes = [f"{dpa.partitions} members trained together in {ens.seconds:.1f} s; base-classifier accuracy "
             f"{pct(base)}; median certified robustness {data['median_tolerance']}; unit: {cert.unit}."]
    if args.compare_sequential:
        notes.append(f"one after another: {data['seconds_sequential']:.1f} s (speed-up {data['speedup']}x), "
                     f"accuracy {pct(data['accuracy_sequential'])}.")
    emit(args, data, title=f"certify dpa: accuracy {pct(data['accuracy'])}",
         rows=[[e, pct(a)] for e, a in curve], columns=["poisoned samples", "certified accuracy"], notes=notes)
    return 0


def _binary(ds, classes):
    a, b = classes
    sel = (ds.y == a) | (ds.y == b)
    return ds.x[sel].flatten(1), (ds.y[sel] == b)


def _sphere_slab(args) -> int:
    from ..certify.sphere_slab import SphereSlabBound, feasible_set, hinge

    if len(args.classes) != 2:
        raise ValueError(f"--classes must name two classes; got {args.classes!r}.")
    meta = _meta(args)
    train, test = load_split(args, "train", meta), load_split(args, "test", meta)
    x, yb = _binary(train, args.classes)
    xt, ybt = _binary(test, args.classes)
    y, yt = yb.double() * 2 - 1, ybt.double() * 2 - 1
    b = SphereSlabBound(**params_from_args(args))
    fs = feasible_set(x, y, b.quantile)
    rows, out = [], []
    with progress(args, "Algorithm 1") as cb:
        for i, eps in enumerate(args.eps):
            bound = b.certify(x, y, eps, fs=fs, progress=lambda d, t: cb(i * t + d, len(args.eps) * t))
            r = b.attack_through_defense(x, y, bound, fs)
            theta = r.pop("theta")
            test_loss = float(hinge(theta, xt.double(), yt).mean())
            test_err = float(((xt.double() @ theta[:-1] + theta[-1]) * yt <= 0).double().mean())
            r.update(test_hinge=test_loss, test_error=test_err)
            out.append(r)
            rows.append([eps, r["upper"], r["achieved_objective"], f"{r['poison_kept']}/{r['poison_total']}",
                         test_loss, pct(test_err)])
    _plot(args.plot, {"upper bound U*": [(r["eps"], r["upper"]) for r in out],
                      "candidate attack": [(r["eps"], r["achieved_objective"]) for r in out]},
          "poison fraction eps", "sphere + slab (oracle)")
    emit(args, {"method": "sphere-slab", "params": vars(b), "classes": args.classes, "results": out},
         title=f"certify sphere-slab: classes {args.classes}, rho={b.rho}, quantile={b.quantile}",
         rows=rows, columns=["eps", "U* (bound)", "attack objective", "poison kept", "test hinge", "test error"],
         notes=["U* bounds the defender's training objective under any attack inside the oracle F; it bounds "
                "the test loss only if (1) train and test losses concentrate and (2) removing clean outliers "
                "does not change the model materially."])
    return 0


def _rab(args) -> int:
    from ..certify.rab import RABEnsemble, RABNearestNeighbor

    meta = _meta(args)
    train, test = load_split(args, "train", meta), load_split(args, "test", meta)
    x, y = _binary(train, args.classes)
    xt, yt = _binary(test, args.classes)
    sel = torch.randperm(len(yt), generator=generator(args))[:args.test]
    xt, yt = xt[sel], yt[sel].long()
    params = params_from_args(args)
    t0 = time.perf_counter()
    if args.exact_1nn:
        c = RABNearestNeighbor(sigma=params.get("sigma", 0.5))
        cert = c.certify(x, y.long(), xt)
    else:
        c = RABEnsemble(**params, seed=args.seed)
        with progress(args, "train RAB members together") as cb:
            cert = c.certify(x, y.long(), xt, progress=cb)
    sec = time.perf_counter() - t0
    curve = [(r, cert.certified_accuracy(yt, r)) for r in args.radii]
    _plot(args.plot, {type(c).__name__: curve}, "L2 radius (training + test perturbation)", "RAB")
    emit(args, {"method": "rab", "params": vars(c), "classes": args.classes, "seconds": round(sec, 2),
                "certified_accuracy": {str(r): a for r, a in curve}},
         title=f"certify rab ({type(c).__name__}, {sec:.1f} s)", rows=[[r, pct(a)] for r, a in curve],
         columns=["radius", "certified accuracy"],
         notes=["Radius is on the joint L2 perturbation of the poisoned training features and the test trigger."])
    return 0
