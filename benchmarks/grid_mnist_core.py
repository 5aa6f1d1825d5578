"""The MNIST core grid (benchmarks/grids/mnist_core.toml): Neural Cleanse, repair and STRIP tables of
BENCHMARKS.md from one grid, summarized beside the tables' own numbers.

    python benchmarks/grid_mnist_core.py --seed-cache      # optional, before the grid: reuse the tables' models
    OMP_NUM_THREADS=1 backdoorlab bench benchmarks/grids/mnist_core.toml --db runs/mnist_core.sqlite --workers 2
    python benchmarks/grid_mnist_core.py                   # summarize -> benchmarks/results/grid_mnist_core.md

``--seed-cache`` copies the models that benchmarks/badnets_mnist.py (clean seed 0, pixel seed 1, pattern
seed 2) and benchmarks/strip.py (3x3 square, seed 0, 6 epochs) trained into the grid's model cache under
the grid's content hashes.  It refuses a model unless its ground truth has the grid's trigger, target
and the very poison indices the grid's cell draws with that seed (same generator, used first for
poisoning), i.e. the same recipe: what the grid would train, up to float summation order.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import CACHE, ROOT, md_table, write_result  # noqa: E402

GRID = ROOT / "benchmarks" / "grids" / "mnist_core.toml"
# grid model (attack label, seed) -> the tables' cached model with the same recipe
SOURCES = {("none", 0): CACHE / "mnist-badnets-0.safetensors",
           ("pixel", 1): CACHE / "mnist-badnets-1.safetensors",
           ("pattern", 2): CACHE / "mnist-badnets-2.safetensors",
           ("square:3", 0): ROOT / "runs" / "filter" / "mnist-badnets-square.safetensors"}


def _kind(cell: dict) -> str:
    a = cell["attack"]
    return a["params"].get("trigger", a["method"]) if a["method"] == "badnets" else a["method"]


def seed_cache(cache: Path) -> None:
    from backdoorlab.bench import load_grid
    from backdoorlab.bench.cell import model_path, poison
    from backdoorlab.data import load_dataset
    from backdoorlab.io import load_ground_truth, truth_path

    grid = load_grid(GRID)
    train = None
    done = set()
    for cell in grid.cells:
        src = SOURCES.get((_kind(cell), cell["seed"]))
        dst = model_path(cell, cache)
        if src is None or dst in done:
            continue
        done.add(dst)
        if not src.exists():
            print(f"{src} missing: the grid will train {dst.name}")
            continue
        if cell["attack"]["method"] != "none":
            train = train or load_dataset("mnist", "train", cell["data_dir"])
            _, goal, idx = poison(cell, train)
            g2, idx2, _ = load_ground_truth(truth_path(src))
            same = (idx2 is not None and torch.equal(idx.sort().values, idx2.sort().values)
                    and g2.target == goal.target and torch.equal(g2.trigger.mask, goal.trigger.mask)
                    and torch.equal(g2.trigger.pattern, goal.trigger.pattern))
            if not same:
                raise SystemExit(f"{src}: not the grid's recipe for {dst.name} (trigger, target or poison "
                                 "indices differ); not copied.")
        dst.parent.mkdir(parents=True, exist_ok=True)
        for a, b in ((src, dst), (src.with_suffix(".json"), dst.with_suffix(".json")),
                     (truth_path(src), truth_path(dst))):
            if a.exists():
                shutil.copyfile(a, b)
        print(f"{src.relative_to(ROOT)} -> {dst.relative_to(ROOT)} ({_kind(cell)}, seed {cell['seed']})")


def _tables(rev: str) -> dict:
    """The three tables' numbers, read from their committed result files at ``rev``."""
    import re
    import subprocess

    def show(name):
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:benchmarks/results/{name}"],
                              capture_output=True, text=True, check=True).stdout

    def grab(pattern, text, n=1):
        m = re.search(pattern, text)
        return m.groups() if n > 1 else (m.group(1) if m else "?")

    nc, rep, st = show("neural_cleanse_mnist.md"), show("repair.md"), show("strip_mnist.md")
    t = {"nc_flag": grab(r"Backdoored model: flagged \*\*(\w+)\*\*", nc),
         "nc_suspects": grab(r"suspects (\[[^\]]*\])", nc),
         "nc_ai": grab(r"anomaly index ([\d.]+) \(paper", nc),
         "nc_twin": grab(r"Clean twin: flagged \*\*(\w+)\*\*, score ([\d.]+)", nc, 2),
         "nc_before": grab(r"\| before patching \| ([\d.]+) \| ([\d.]+) \|", nc, 2),
         "nc_after": grab(r"\| patched w/ reversed trigger \| ([\d.]+) \| ([\d.]+) \|", nc, 2),
         "strip_1": grab(r"\| 1\.0% \| ([\d.]+)% \| ([\d.]+)% \|", st, 2),
         "strip_auroc": grab(r"AUROC ([\d.]+)\.", st), "repair": {}}
    for line in rep.split("| method | MNIST")[0].splitlines() if "| method | MNIST" in rep else rep.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in ("no defence", "retraining", "Fine-Pruning", "NAD", "I-BAU"):
            t["repair"].setdefault(cells[0], cells[1:])
    return t


NOTES = """
### Does the grid reproduce the tables?

The models are the tables' own (the `no defence` rows are identical to the last digit), so every
difference comes from the defender's side: the grid draws the clean subset and the defense's
generator from the model's seed + 1 (pattern 3, pixel 2, clean twin / square / blend 1), the
tables from fixed seeds (repair.py: clean subset 0, repair 1; neural_cleanse_mnist.py: 0 and 0;
strip.py: its own permutation of the training set, and 2,000 + 2,000 test images where the grid
uses 1,000 + 1,000).

- **Neural Cleanse: reproduced.** Same verdicts (pattern model flagged with the true target 0,
  clean twin not flagged); anomaly index 5.33 vs 3.96 (twin 1.04 vs 1.38) on another 10% draw;
  unlearning 98.70 / 0.19 vs 98.84 / 0.22 (the issue's <= 1% ASR at <= 1 pt CA: met in both).
  The grid also flags the pixel (index 8.81) and blend (2.33) models with their true targets.
- **STRIP: reproduced.** FAR 0.00% at the 1% preset FRR in both; test FRR 1.20% (12 of 1,000) vs
  0.90%; AUROC 1.0000 in both.
- **Repair: reproduced.** Retraining, Fine-Pruning and NAD on the pixel and pattern models
  (CA within 0.7 pt; ASR within 2.4 pt: Fine-Pruning pattern 1.63% vs 3.97%, NAD 0.72% vs 0.21%;
  retraining leaves the backdoor in both), and I-BAU since its random restarts (a5946eb): pattern
  98.39 / 0.39 vs 98.52 / 0.19, pixel 97.97 / 0.39 vs 98.49 / 0.16.  Before a5946eb the I-BAU
  pattern cell was NOT reproduced (36.98% ASR in the grid vs 0.10% in the table): a single inner
  start finds the trigger direction on some 3,000-image clean draws and not on others (over five
  draws 0.10 / 36.98 / 71.46 / 0.42 / 90.14% ASR, `--draw-check --draw-seeds 3 1 4 5`); with 4
  starts the same five draws give 0.19-0.39% (`benchmarks/results/repair.md`, "over draws").
  The I-BAU rows here were re-run on a5946eb (`DELETE FROM cells WHERE defense='i-bau'`, then the
  same bench command).
- Blend: another model than repair.md's (its noise key is drawn from the cell's seed; the table's
  is a fixed key), so not a reproduction; ranking on it: NAD 0.47%, Fine-Pruning 3.77%,
  NC unlearning 1.23%, I-BAU 84.59%, retraining 99.27% ASR.
- NAD's divergence guard (055a474) did not fire on any grid model: new and old NAD rows are equal.
"""


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def summarize(db: Path, old_db: Path | None = None, old_rev: str = "") -> None:
    import subprocess
    import time

    from backdoorlab.bench import Store, aggregate, markdown

    store = Store(db)
    rows = store.rows("mnist-core")
    store.close()
    old = []
    if old_db is not None and old_db.exists():
        st = Store(old_db)
        old = [r for r in st.rows("mnist-core") if r["defense"] in ("nad", "i-bau") and r["status"] == "done"]
        st.close()
    if not rows:
        raise SystemExit(f"{db}: no mnist-core rows; run the grid first (see this file's docstring).")
    cols, table = aggregate(rows)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    t = _tables("HEAD")
    t_old = _tables(old_rev) if old else t
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] != "done"]
    start = ROOT / "runs" / "mnist_core.start"
    t0 = float(start.read_text()) if start.exists() else min(r["finished"] - r["seconds"] for r in done)
    t1 = max(r["finished"] for r in rows)
    fmt = lambda x: time.strftime("%H:%M", time.gmtime(x))  # noqa: E731
    restart = ROOT / "runs" / "mnist_core.restart"
    rerun = (f", including the NAD / I-BAU rows deleted at {fmt(float(restart.read_text()))} and re-run on "
             "the new defaults of 055a474 / 8cf92d6 with the same command") if restart.exists() else ""

    def cell(kind, defense, pool=None):
        for r in (done if pool is None else pool):
            if _kind(json.loads(r["config"])) == kind and r["defense"] == defense:
                return r
        return None

    def met(r, k):
        return None if r is None else json.loads(r["metrics"] or "{}").get(k)

    # --- Neural Cleanse
    ncp, nct, ncu = cell("pattern", "neural-cleanse"), cell("none", "neural-cleanse"), cell("pattern", "nc-unlearn")
    pat = cell("pattern", "none")
    nc_rows = [
        ["pattern model before (CA / ASR %)", f"{_pct(pat and pat['ca'])} / {_pct(pat and pat['asr'])}",
         " / ".join(t["nc_before"])],
        ["NC on pattern model: flagged, suspects, anomaly index",
         f"{met(ncp, 'backdoored')}, {met(ncp, 'suspects')}, {met(ncp, 'score') or float('nan'):.2f}",
         f"{t['nc_flag']}, {t['nc_suspects']}, {t['nc_ai']}"],
        ["NC on clean twin: flagged, anomaly index", f"{met(nct, 'backdoored')}, {met(nct, 'score') or float('nan'):.2f}",
         f"{t['nc_twin'][0]}, {t['nc_twin'][1]}"],
        ["NC unlearning, reversed trigger (CA / ASR %)", f"{_pct(ncu and ncu['ca'])} / {_pct(ncu and ncu['asr'])}",
         " / ".join(t["nc_after"])],
    ]
    # --- repair
    names = {"none": "no defence", "finetune": "retraining", "fine-pruning": "Fine-Pruning", "nad": "NAD", "i-bau": "I-BAU"}
    rep_rows = []
    variants = [(d, label, None) for d, label in names.items()]
    if old:
        variants += [(d, label, old) for d, label in (("nad", "NAD"), ("i-bau", "I-BAU"))]
    for d, label, pool in variants:
        line = [label if pool is None else f"{label}, code of the table ({old_rev})"]
        for i, kind in enumerate(("pixel", "pattern", "blend")):
            r = cell(kind, d, pool)
            ours = "-" if r is None else f"{_pct(r['ca'])} / {_pct(r['asr'])} / {_pct(r['ra'])}"
            theirs = (t if pool is None else t_old)["repair"].get(label, ["?"] * 3)[i]
            line += [ours, " / ".join(theirs.split(" / ")[:3])]
        rep_rows.append(line)
    # --- STRIP
    sq = cell("square:3", "strip")
    strip_rows = [["FRR on clean test images at preset FRR 1%", _pct(met(sq, "frr")) + "%", t["strip_1"][0] + "%"],
                  ["FAR (trojaned test images)", _pct(met(sq, "far")) + "%", t["strip_1"][1] + "%"],
                  ["AUROC", f"{met(sq, 'auroc') or float('nan'):.4f}", t["strip_auroc"]]]
    sqm = cell("square:3", "none")
    body = f"""## One grid for the Neural Cleanse, repair and STRIP tables (issue 10)

Grid `benchmarks/grids/mnist_core.toml` ({len(rows)} cells: {len(done)} done, {len(failed)} failed), full MNIST,
BadNets CNN; every defense with its library defaults.  Commands (one grid command; the first line only
puts the tables' own cached models into the grid's model cache, after checking trigger, target and
poison indices against the grid's recipe; without it the grid trains them):

    python benchmarks/grid_mnist_core.py --seed-cache
    OMP_NUM_THREADS=1 backdoorlab bench benchmarks/grids/mnist_core.toml --db runs/mnist_core.sqlite --workers 2
    backdoorlab bench summarize --db runs/mnist_core.sqlite --out runs/mnist_core     # CSV + plots
    python benchmarks/grid_mnist_core.py                                              # this file

This run: the grid ran with `PYTHONPATH` on a `git archive` copy of `src/` (others were editing the
working tree): 7078b52 plus the bench changes of f1efae4 for the first pass; then
`sqlite3 runs/mnist_core.sqlite ".backup runs/mnist_core.code-7078b52.sqlite"`,
`DELETE FROM cells WHERE defense IN ('nad','i-bau')` (the config hash covers settings, not code)
and the same bench command on a copy of 8cf92d6 (the new NAD / I-BAU defaults); this file was
written with `--old-db runs/mnist_core.code-7078b52.sqlite --old-rev 7078b52` to show both; at
23:47 UTC the four I-BAU rows were deleted again and re-run on the working tree at a5946eb (I-BAU
with 4 inner starts), and this file rewritten with `python benchmarks/grid_mnist_core.py`.

Run {fmt(t0)}-{fmt(t1)} UTC ({(t1 - t0) / 60:.0f} min wall{rerun}), {sum(r['seconds'] or 0 for r in rows) / 60:.0f} min
of cell time (the final rows) over 2 worker processes of one torch thread each.  Other developers' jobs
shared the 2 cores (load average 17-27 during the run; this session got roughly a quarter of one
core), so the seconds column is wall seconds on a crowded machine, not a cost.

**Trim**: one seed per attack, the seed of the table's own model (the 3-seed grid did not fit the
time this machine left; remove the per-attack `seeds` lines for it), so the column `seeds` is 1 and
there are no confidence intervals.

### Summary (`backdoorlab bench summarize`; %, score = NC anomaly index)

{markdown(cols, table)}
### Side by side with the tables (committed results at {rev})

Neural Cleanse (`neural_cleanse_mnist.md`; the same pattern model and clean twin, 10% clean set):

{md_table(["", "grid", "table"], nc_rows)}

Repair (`repair.md`; CA / ASR / RA %, 5% clean set; pixel and pattern = the table's models):

{md_table(["method", "pixel (grid)", "pixel (table)", "pattern (grid)", "pattern (table)", "blend (grid)",
           "blend (table, other model)"], rep_rows)}

STRIP (`strip_mnist.md`; the same 3x3-square model, CA {_pct(sqm and sqm['ca'])}%, ASR
{_pct(sqm and sqm['asr'])}%; 1,000 overlays + 1,000 calibration images; threshold at FRR 1%):

{md_table(["", "grid (1,000 + 1,000 test images)", "table (2,000 + 2,000)"], strip_rows)}
"""
    if failed:
        body += "\nFailed cells: " + "; ".join(f"{r['defense']} on {r['attack']}: {r['error']}" for r in failed) + "\n"
    body += NOTES
    print(write_result("grid_mnist_core", body))


def draw_check(seeds=(3,)) -> None:
    """I-BAU on the pattern model with repair.py's clean-set draw (clean seed 0, repair seed 1) and
    with the grid cell's draw (seed + 1 = 3 for both; more seeds: other draws of the same kind): is a
    grid-vs-table gap only the draw?"""
    from backdoorlab.data import clean_subset, load_dataset
    from backdoorlab.defenses.mitigate import IBAU
    from backdoorlab.io import load_ground_truth, load_model, truth_path
    from backdoorlab.metrics import evaluate

    torch.set_num_threads(1)
    data = str(ROOT.parent / "shared" / "data")
    train, test = load_dataset("mnist", "train", data), load_dataset("mnist", "test", data)
    path = SOURCES[("pattern", 2)]
    model, _ = load_model(path)
    goal = load_ground_truth(truth_path(path))[0]
    draws = [("repair.py draw: clean seed 0, repair seed 1", 0, 1)]
    draws += [(f"grid-style draw: seed {k} for both", k, None) for k in seeds]
    for name, cs, rs in draws:
        g = torch.Generator().manual_seed(cs)
        clean = clean_subset(train, fraction=0.05, generator=g)
        e = evaluate(IBAU().repair(model, clean, generator=torch.Generator().manual_seed(rs) if rs is not None else g).model,
                     test, goal)
        print(f"{name}: CA {100 * e.clean_accuracy:.2f} ASR {100 * e.attack_success_rate:.2f} "
              f"RA {100 * e.robust_accuracy:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed-cache", action="store_true", help="only put the tables' models into the grid cache")
    ap.add_argument("--draw-check", action="store_true", help="only run I-BAU on the pattern model with the "
                    "table's and the grid's clean-set draws")
    ap.add_argument("--draw-seeds", type=int, nargs="+", default=[3])
    ap.add_argument("--cache", default=str(ROOT / "runs" / "bench-cache"))
    ap.add_argument("--db", default=str(ROOT / "runs" / "mnist_core.sqlite"))
    ap.add_argument("--old-db", default=None, help="a copy of the DB whose NAD / I-BAU rows ran on older code")
    ap.add_argument("--old-rev", default="", help="the commit of that older code")
    a = ap.parse_args()
    if a.draw_check:
        draw_check(a.draw_seeds)
        return
    if a.seed_cache:
        seed_cache(Path(a.cache))
        return
    summarize(Path(a.db), Path(a.old_db) if a.old_db else None, a.old_rev)


if __name__ == "__main__":
    main()
