"""``backdoorlab serve MODEL --guard strip --fpr 0.01``: the guarded prediction server."""
from __future__ import annotations

import argparse

from . import _common as c


def register(sub, groups) -> None:
    p = sub.add_parser("serve", help="serve a model behind a calibrated input filter (FastAPI + uvicorn)")
    p.add_argument("model", help="model file (.safetensors with its .json sidecar)")
    p.add_argument("--guard", default="strip", help="input filter to calibrate (a FILTERS name; default strip)")
    p.add_argument("--fpr", type=float, default=0.01, help="share of clean inputs the guard may withhold")
    p.add_argument("--calibration", type=int, default=50,
                   help="clean images per class used to calibrate (from the training split; default 50)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    c.add_common(p)
    p.set_defaults(func=cmd_serve)


def build_guard(args: argparse.Namespace, model, meta):
    from ..data import clean_subset
    from ..defenses.filter import FILTERS, Guard

    if args.guard not in FILTERS:
        raise ValueError(f"--guard must be one of {sorted(FILTERS)}; got {args.guard!r}.")
    train = c.load_split(args, "train", meta)
    clean = clean_subset(train, per_class=args.calibration, generator=c.generator(args))
    x = clean.x[__import__("torch").randperm(len(clean), generator=c.generator(args))]
    return Guard.calibrate(FILTERS[args.guard](), model, x, fpr=args.fpr)


def cmd_serve(args: argparse.Namespace) -> int:  # pragma: no cover - runs a server until stopped
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError("backdoorlab serve needs the 'serve' extra: pip install 'backdoorlab[serve]'") from e
    from ..serve import create_app

    model, meta = c.load_model(args, args.model)
    with c.progress(args, "calibrating guard"):
        guard = build_guard(args, model, meta)
    app = create_app(model, guard, name=str(args.model), max_body_bytes=args.max_body_bytes)
    c.emit(args, {"url": f"http://{args.host}:{args.port}", "threshold": guard.threshold},
           title=f"serving {args.model} on http://{args.host}:{args.port} (guard {args.guard}, "
                 f"threshold {guard.threshold:.4g} at FPR {args.fpr})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
