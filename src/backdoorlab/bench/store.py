"""SQLite results store: one row per cell, keyed by the cell's config hash.

A row is written once, in one transaction, when its cell has finished (done or failed), so a grid
killed at any moment (even SIGKILL) leaves only complete rows; re-running skips every hash that is
already ``done``, re-runs ``failed`` ones, and the primary key forbids duplicates.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    hash TEXT PRIMARY KEY, grid TEXT, config TEXT, dataset TEXT, arch TEXT, attack TEXT, defense TEXT,
    seed INTEGER, status TEXT, ca REAL, asr REAL, ra REAL, metrics TEXT, seconds REAL, peak_mem_mb REAL,
    version TEXT, error TEXT, finished REAL)
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(SCHEMA)
        self.db.commit()

    def done(self) -> set[str]:
        return {h for (h,) in self.db.execute("SELECT hash FROM cells WHERE status = 'done'")}

    def write(self, h: str, cell: dict, result: dict) -> None:
        from .. import __version__

        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (h, cell["grid"], json.dumps(cell, sort_keys=True), cell["dataset"], cell["arch"],
                 _label(cell["attack"]), _label(cell["defense"]), cell["seed"], result["status"],
                 result.get("ca"), result.get("asr"), result.get("ra"), json.dumps(result.get("metrics", {})),
                 result.get("seconds"), result.get("peak_mem_mb"), __version__, result.get("error"), time.time()))

    def rows(self, grid: str | None = None) -> list[dict]:
        cur = self.db.execute("SELECT * FROM cells" + (" WHERE grid = ?" if grid else "") + " ORDER BY hash",
                              (grid,) if grid else ())
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def close(self) -> None:
        self.db.close()


def _label(entry: dict) -> str:
    if not entry["params"]:
        return entry["method"]
    return entry["method"] + "(" + ",".join(f"{k}={v}" for k, v in sorted(entry["params"].items())) + ")"
