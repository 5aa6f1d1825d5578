"""Executors: local worker processes (default) or Ray.  Both hand every result back to this
process, which is the only writer of the SQLite store."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Callable

from .cell import run_cell
from .grid import Grid, config_hash
from .store import Store


def pending(grid: Grid, store: Store) -> list[tuple[str, dict]]:
    done = store.done()
    seen, out = set(), []
    for cell in grid.cells:
        h = config_hash(cell)
        if h not in done and h not in seen:
            seen.add(h)
            out.append((h, cell))
    return out


def run_local(grid: Grid, store: Store, cache_dir: str | Path, workers: int = 1,
              progress: Callable[[int, int], None] | None = None) -> int:
    todo = pending(grid, store)
    if not todo:
        return 0
    if workers <= 1:
        for i, (h, cell) in enumerate(todo):
            store.write(h, cell, run_cell(cell, cache_dir))
            if progress:
                progress(i + 1, len(todo))
        return len(todo)
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        results = pool.imap_unordered(_run_pair, [(h, c, str(cache_dir)) for h, c in todo])
        for i, (h, cell, res) in enumerate(results):
            store.write(h, cell, res)
            if progress:
                progress(i + 1, len(todo))
    return len(todo)


def _run_pair(arg):
    h, cell, cache = arg
    return h, cell, run_cell(cell, cache)


def run_ray(grid: Grid, store: Store, cache_dir: str | Path, address: str | None = None,
            progress: Callable[[int, int], None] | None = None, num_cpus: int | None = None) -> int:
    try:
        import ray
    except ImportError as e:
        raise ImportError("the Ray executor needs the 'bench' extra: pip install 'backdoorlab[bench]'") from e
    todo = pending(grid, store)
    if not todo:
        return 0
    started = not ray.is_initialized()
    if started:
        kw = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
        ray.init(ignore_reinit_error=True, log_to_driver=False, **kw)
    try:
        remote = ray.remote(num_cpus=1)(run_cell)
        refs = {remote.remote(cell, str(cache_dir)): (h, cell) for h, cell in todo}
        waiting, n = list(refs), 0
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for r in ready:
                h, cell = refs[r]
                store.write(h, cell, ray.get(r))
                n += 1
                if progress:
                    progress(n, len(todo))
    finally:
        if started:
            ray.shutdown()
    return len(todo)
