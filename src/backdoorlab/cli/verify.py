"""``backdoorlab verify``: problem 1 (sound + complete) and problem 2 (statistical) of Pham & Sun."""
from __future__ import annotations

import argparse

from . import _common as c


def register(sub, groups) -> None:
    p = sub.add_parser("verify", help="verify backdoor-freeness of a ReLU network for a trigger region "
                       "(Pham & Sun 2022): verified / falsified (with a trigger) / boundary / unknown")
    p.add_argument("model", help="model file (.safetensors with its .json sidecar); an MLP or Linear/Conv/ReLU net")
    p.add_argument("--target", type=int, default=None, help="target label (default: every class)")
    p.add_argument("--patch", default="3x3@bottom-right",
                   help="trigger region HxW@POSITION: a corner name, ROW,COL, or 'all' for every position "
                        "(default 3x3@bottom-right)")
    p.add_argument("--lo", type=float, default=0.0, help="smallest trigger pixel value (default 0)")
    p.add_argument("--hi", type=float, default=1.0, help="largest trigger pixel value (default 1)")
    p.add_argument("--images", type=int, default=10,
                   help="problem 1: |X| test images drawn at random; each target uses the correctly classified "
                        "ones with another label (default 10)")
    p.add_argument("--milp-time-limit", type=float, default=60.0, help="seconds per MILP (default 60)")
    g = p.add_argument_group("problem 2 (statistical)")
    g.add_argument("--statistical", action="store_true", help="no trigger with success rate >= --rate")
    g.add_argument("--rate", type=float, default=0.9, help="success rate Pr (default 0.9)")
    g.add_argument("--confidence", type=float, default=0.99, help="1 - alpha (default 0.99)")
    g.add_argument("--k", type=int, default=5, help="images per round K (default 5; keep it small)")
    g.add_argument("--test", default="binomial", choices=["binomial", "sprt"],
                   help="exact one-sided binomial test (default) or Wald's SPRT as in the paper")
    c.add_common(p)
    p.set_defaults(func=cmd_verify)


def regions_from_spec(spec: str, shape, lo: float, hi: float):
    from ..certify.region import TriggerRegion, patch_family
    from ..triggers import parse_patch_spec

    size, _, pos = spec.partition("@")
    if pos.lower() in ("all", "any", "*"):
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--patch must look like '3x3@bottom-right', '3x3@20,20' or '3x3@all'; "
                             f"got {spec!r}.") from None
        return patch_family(shape, (h, w), lo, hi)
    return [TriggerRegion.from_trigger(parse_patch_spec(spec, shape), lo, hi)]


def cmd_verify(args: argparse.Namespace) -> int:
    import torch

    from ..certify.freeness import FreenessVerifier
    from ..certify.statistical import StatisticalVerifier

    model, meta = c.load_model(args, args.model)
    model = model.cpu()
    test = c.load_split(args, "test", meta)
    regions = regions_from_spec(args.patch, test.info.input_shape, args.lo, args.hi)
    if args.images < 1:
        raise ValueError(f"--images must be a positive integer; got {args.images!r}.")
    n_cls = test.info.num_classes
    if args.target is not None and not 0 <= args.target < n_cls:
        raise ValueError(f"--target must be in [0, {n_cls}); got {args.target!r}.")
    g = c.generator(args)
    verifier = FreenessVerifier(milp_time_limit=args.milp_time_limit)
    spec = f"{args.patch} in [{args.lo:g}, {args.hi:g}]"
    if args.statistical:
        if not 0 < args.confidence < 1:
            raise ValueError(f"--confidence must be in (0, 1); got {args.confidence!r}.")
        sv = StatisticalVerifier(rate=args.rate, images_per_round=args.k, test=args.test,
                                 alpha=1 - args.confidence, beta=1 - args.confidence, verifier=verifier)
        targets = [args.target] if args.target is not None else list(range(n_cls))
        certs = []
        with c.progress(args, "verify (statistical)") as cb:
            for t in targets:
                certs.append(sv.certify(model, test.x, test.y, regions, t, generator=g, progress=cb))
        rows = [[s.target, s.status, s.rounds, s.unsat_rounds, s.round_error,
                 s.confidence, s.trigger_rate, f"{s.seconds:.2f}"] for s in certs]
        c.emit(args, {"model": str(args.model), "spec": spec, "certificates": [s.to_json() for s in certs]},
               title=f"Problem 2: no trigger ({spec}) with success rate >= {args.rate:g} "
                     f"({args.test} test, K = {args.k}, confidence {args.confidence:g})",
               rows=rows, columns=["target", "status", "rounds", "UNSAT rounds", "1 - Pr^K", "confidence",
                                   "trigger rate", "seconds"],
               notes=["confidence = 1 - P[Binom(N, 1 - Pr^K) >= UNSAT rounds]; the guarantee is about the pool "
                      "of correctly classified test images with another label.",
                      "K stays small: one resistant image makes a round UNSAT and can hide a real backdoor."])
        return 0
    idx = torch.randperm(len(test), generator=g)[:args.images]
    x, y = test.x[idx], test.y[idx]
    with c.progress(args, "verify") as cb:
        certs = verifier.certify(model, x, regions, targets=args.target, labels=y, generator=g, progress=cb)
    rows = [[k.target, k.status, k.n_images, len(k.positions),
             ", ".join(f"{m} {n}" for m, n in k.counts().items()),
             k.region.name if k.region is not None else "-", f"{k.seconds.get('total', 0.0):.2f}"] for k in certs]
    notes = [f"X = {args.images} random test images; each target uses the correctly classified ones with "
             "another label.", "verified = proved (bounds or an exactly checked Farkas certificate); falsified = "
             "a trigger checked by a forward pass on every image; boundary = only a tie."]
    for k in certs:
        if k.counterexample is not None:
            vals = ", ".join(f"{v:.3f}" for v in k.counterexample.tolist()[:12])
            notes.append(f"target {k.target}: {k.status} trigger at {k.region.name}: [{vals}"
                         f"{', ...' if k.counterexample.numel() > 12 else ''}]")
    c.emit(args, {"model": str(args.model), "spec": spec, "images": [int(i) for i in idx],
                  "certificates": [k.to_json() for k in certs]},
           title=f"Problem 1: is there one trigger ({spec}) that flips every image to the target?",
           rows=rows, columns=["target", "status", "|X|", "positions", "decided by", "trigger at", "seconds"],
           notes=notes)
    return 0
