"""``backdoorlab bench GRID.toml`` and ``backdoorlab bench summarize``."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import _common as c


def register(sub, groups) -> None:
    p = sub.add_parser("bench", help="run an experiment grid (or `bench summarize`) with a resumable SQLite store")
    p.add_argument("grid", help="GRID.toml to run, or the word 'summarize'")
    p.add_argument("--db", default="runs/bench.sqlite", help="results database (default runs/bench.sqlite)")
    p.add_argument("--cache", default="runs/bench-cache", help="artifact cache folder (default runs/bench-cache)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--ray-address", default=None,
                   help="run on Ray: 'auto' for a running cluster, 'local' to start a local instance")
    p.add_argument("--name", default=None, help="summarize: only this grid's rows")
    p.add_argument("--out", default=None, help="summarize: folder for table.md, table.csv and plots")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import Store, aggregate, csv_text, load_grid, markdown, plots, run_local, run_ray
    from ..io import atomic_write_bytes

    store = Store(args.db)
    try:
        if args.grid == "summarize":
            rows = store.rows(args.name)
            cols, table = aggregate(rows)
            files = []
            if args.out:
                out = Path(args.out)
                files = [atomic_write_bytes(out / "table.md", markdown(cols, table).encode()),
                         atomic_write_bytes(out / "table.csv", csv_text(cols, table).encode()), *plots(rows, out)]
            failed = [r for r in rows if r["status"] != "done"]
            c.emit(args, {"columns": cols, "rows": table, "failed": [{"hash": r["hash"], "error": r["error"]}
                                                                       for r in failed], "files": [str(f) for f in files]},
                   title=f"{len(rows)} cells ({len(failed)} failed) in {args.db}", rows=table, columns=cols)
            return 0
        grid = load_grid(args.grid)
        with c.progress(args, f"grid {grid.name}") as cb:
            if args.ray_address:
                n = run_ray(grid, store, args.cache, None if args.ray_address == "local" else args.ray_address, cb)
            else:
                n = run_local(grid, store, args.cache, args.workers, cb)
        rows = store.rows(grid.name)
        failed = sum(r["status"] != "done" for r in rows)
        c.emit(args, {"grid": grid.name, "cells": len(grid.cells), "ran": n, "failed": failed, "db": args.db},
               title=f"grid {grid.name}: {len(grid.cells)} cells, ran {n} now ({len(grid.cells) - n} already done), "
                     f"{failed} failed; results in {args.db} — `backdoorlab bench summarize --db {args.db}`")
        return 0
    finally:
        store.close()
