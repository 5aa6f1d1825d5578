"""``backdoorlab report RUN``: render a saved run (``--save-run RUN`` of scan / repair / certify /
filter / ...) as one self-contained HTML page."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import _common as c


def register(sub, groups) -> None:
    p = sub.add_parser("report", help="render a run saved with --save-run as a self-contained HTML report")
    p.add_argument("run", help="run folder (or its run.json) written by --save-run")
    p.add_argument("-o", "--output", default=None, help="HTML file to write (default RUN/report.html)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..io import ModelFileError, atomic_write_bytes, load_json, read_png_bytes
    from ..report import render_html

    run_path = Path(args.run)
    folder = run_path.parent if run_path.suffix == ".json" else run_path
    run = load_json(folder / "run.json" if run_path.suffix != ".json" else run_path)
    if not isinstance(run, dict) or "result" not in run:
        raise ModelFileError(f"{folder}/run.json: not a backdoorlab run (no 'result'); save one with --save-run.")
    images = {}
    for name, fname in run.get("images", {}).items():
        p = folder / Path(fname).name
        if p.exists():
            images[name] = read_png_bytes(p)
    out = Path(args.output) if args.output else folder / "report.html"
    atomic_write_bytes(out, render_html(run, images).encode())
    c.emit(args, {"report": str(out), "images": len(images)}, title=f"wrote {out} ({len(images)} images)")
    return 0
