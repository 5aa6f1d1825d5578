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


def test_per_entry_overrides_and_defense_major_order(tmp_path):
    extra = ('\n[[attacks]]\nmethod = "badnets"\nparams = { trigger = "pixel", target = 1, rate = 0.1 }\n'
             'train = { epochs = 1 }\ndefenses = ["strip"]\nseeds = [5, 6, 7]\n'
             '[[defenses]]\nmethod = "finetune"\nclean_fraction = 0.5\n')
    g = load_grid(_grid_file(tmp_path, [0, 1], extra))
    # 2 attacks x 3 defenses x 2 seeds, plus the pixel attack with strip only and its own 3 seeds
    assert len(g.cells) == 2 * 3 * 2 + 3
    pixel = [c for c in g.cells if c["attack"]["params"].get("trigger") == "pixel"]
    assert [(c["defense"]["method"], c["seed"]) for c in pixel] == [("strip", 5), ("strip", 6), ("strip", 7)]
    assert {c["seed"] for c in g.cells if c not in pixel} == {0, 1}
    assert all(c["train"] == {"epochs": 1} for c in pixel)  # the attack's train table overrides [train]
    assert all(c["train"] == {"epochs": 2} for c in g.cells if c not in pixel)
    assert {c["clean_fraction"] for c in g.cells if c["defense"]["method"] == "finetune"} == {0.5}
    assert {c["clean_fraction"] for c in g.cells if c["defense"]["method"] != "finetune"} == {0.05}
    order = [c["defense"]["method"] for c in g.cells]
    assert order == sorted(order, key=["none", "strip", "finetune"].index)  # defense by defense
    # entries without overrides keep the cell (and so its hash) exactly as before
    assert set(g.cells[0]) == {"grid", "dataset", "arch", "attack", "defense", "seed", "train",
                               "clean_fraction", "data_dir", "fpr"}
    assert g.cells[0]["attack"] == {"method": "none", "params": {}}
    with pytest.raises(ValueError, match="unknown keys \\['epochs'\\]"):
        load_grid(_grid_file(tmp_path, [0], '\n[[defenses]]\nmethod = "nad"\nepochs = 3\n'))
    with pytest.raises(ValueError, match="defenses must be a list of the grid's defense methods"):
        load_grid(_grid_file(tmp_path, [0], '\n[[attacks]]\nmethod = "blend"\ndefenses = ["nad"]\n'))
    with pytest.raises(ValueError, match="seeds must be a list of integers"):
        load_grid(_grid_file(tmp_path, [0], '\n[[attacks]]\nmethod = "blend"\nseeds = 3\n'))
    with pytest.raises(ValueError, match="clean_fraction must be in \\(0, 1\\]"):
        load_grid(_grid_file(tmp_path, [0], '\n[[defenses]]\nmethod = "nad"\nclean_fraction = 2\n'))


def test_mnist_core_grid_matches_the_tables_settings():
    g = load_grid(HERE.parents[1] / "benchmarks" / "grids" / "mnist_core.toml")
    by = lambda d: [c for c in g.cells if c["defense"]["method"] == d]  # noqa: E731
    assert {c["clean_fraction"] for c in by("neural-cleanse") + by("nc-unlearn")} == {0.10}  # NC table: 10%
    assert {c["clean_fraction"] for d in ("finetune", "fine-pruning", "nad", "i-bau") for c in by(d)} == {0.05}
    square = [c for c in g.cells if c["attack"]["params"].get("trigger") == "square:3"]
    assert {c["defense"]["method"] for c in square} == {"none", "strip"} and {c["train"]["epochs"] for c in square} == {6}
    n = sum(c["defense"]["method"] == "i-bau" for c in g.cells)
    assert n >= 4 and [c["defense"]["method"] for c in g.cells[-n:]] == ["i-bau"] * n  # runs last
    # each attack's seed is the one its table's model was trained with (benchmarks/badnets_mnist.py: model i = seed i)
    seeds = {c["attack"]["params"].get("trigger", c["attack"]["method"]): c["seed"] for c in g.cells}
    assert seeds == {"none": 0, "pixel": 1, "pattern": 2, "blend": 0, "square:3": 0}


def test_peak_memory_is_per_cell_not_per_worker():
    import resource

    import torch

    from backdoorlab.bench.cell import reset_peak_memory

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    x = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched
    high = peak_mb()
    del x
    if not reset_peak_memory():
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert peak_mb() < high - 200  # an earlier cell's peak no longer counts
