"""Experiment grid: resume after SIGKILL without lost or duplicated rows; local == Ray; failures recorded."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backdoorlab.bench import Store, aggregate, load_grid, run_local
from backdoorlab.bench.grid import config_hash

HERE = Path(__file__).parent


def _grid_file(tmp_path, seeds, extra=""):
    text = (HERE / "tiny.toml").read_text().replace("seeds = [0, 1]", f"seeds = {list(seeds)}") + extra
    p = tmp_path / "grid.toml"
    p.write_text(text)
    return p


def test_grid_cells_and_hashes(tmp_path):
    g = load_grid(_grid_file(tmp_path, [0, 1, 2]))
    assert len(g.cells) == 2 * 2 * 3
    assert len({config_hash(c) for c in g.cells}) == 12
    with pytest.raises(ValueError, match="is in no registry"):
        load_grid(_grid_file(tmp_path, [0], '\n[[defenses]]\nmethod = "no-such-defense"\n'))


def _count(db):
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_resume_after_sigkill(tmp_path):
    grid = _grid_file(tmp_path, range(6))  # 24 cells
    db, cache = tmp_path / "r.sqlite", tmp_path / "cache"
    cmd = [sys.executable, "-m", "backdoorlab.cli", "bench", str(grid), "--db", str(db), "--cache", str(cache)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _count(db) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r["hash"]: r["finished"] for r in Store(db).rows()}
    assert 3 <= len(before) < 24, "the grid must be killed mid-run for this test to mean anything"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=600)
    rows = Store(db).rows()
    hashes = [r["hash"] for r in rows]
    assert len(rows) == 24 and len(set(hashes)) == 24
    assert {config_hash(c) for c in load_grid(grid).cells} == set(hashes)
    assert all(r["status"] == "done" for r in rows)
    after = {r["hash"]: r["finished"] for r in rows}
    assert all(after[h] == t for h, t in before.items())  # finished cells were not re-run


def test_failed_cell_is_recorded_and_grid_goes_on(tmp_path):
    grid = _grid_file(tmp_path, [0], '\n[[defenses]]\nmethod = "nad"\nparams = { beta = -1.0 }\n')
    store = Store(tmp_path / "f.sqlite")
    run_local(load_grid(grid), store, tmp_path / "cache")
    rows = store.rows()
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 6 and len(failed) == 2 and all("NAD.beta" in r["error"] for r in failed)


def test_local_and_ray_give_the_same_table(tmp_path):
    pytest.importorskip("ray")
    from backdoorlab.bench import run_ray

    g = load_grid(_grid_file(tmp_path, [0]))
    local, remote = Store(tmp_path / "l.sqlite"), Store(tmp_path / "ray.sqlite")
    run_local(g, local, tmp_path / "c1")
    run_ray(g, remote, tmp_path / "c2", num_cpus=2)
    cols, a = aggregate(local.rows())
    _, b = aggregate(remote.rows())
    keep = [i for i, c in enumerate(cols) if c != "seconds"]  # wall time differs, nothing else may
    assert [[r[i] for i in keep] for r in a] == [[r[i] for i in keep] for r in b]
    assert [r["ca"] for r in local.rows()] == [r["ca"] for r in remote.rows()]
