"""Benchmark for issue 4: model sanitization under one protocol.

Rows = mitigation method (retraining, Fine-Pruning, NAD, I-BAU), columns = attack (BadNets single
pixel, BadNets pattern, blend), each cell CA / ASR / RA / seconds on MNIST with a 5% clean set;
plus I-BAU with only 100 clean samples and one CIFAR-10-subset setting.

    .venv/bin/python benchmarks/repair.py              # everything (trains + caches models first)
    .venv/bin/python benchmarks/repair.py --prepare    # only train and cache the backdoored models
    .venv/bin/python benchmarks/repair.py --select mnist-pattern ibau fraction 0.05 '{"rounds": 2}'
                                                       # default selection on the defender's data only
    .venv/bin/python benchmarks/repair.py --settings mnist-pattern --methods NAD I-BAU --fresh
                                                       # recompute (re-time) cached cells side by side
    .venv/bin/python benchmarks/repair.py --no-table --timing 3   # NAD / I-BAU alternated, CPU s

``--select`` is how the NAD / I-BAU defaults were chosen: the defender's clean set is split 80/20,
the method repairs on 80% and is scored on the held-out 20% by clean accuracy and a backdoor proxy
(``targeted_uap_share``); no test image and no trigger is used.

Backdoored models are trained once and cached in ``runs/repair/`` (git-ignored) with their
ground-truth files.  The defender sees only the model and the clean subset; ground truth goes only
to the metrics.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from backdoorlab.attacks import BadNets  # noqa: E402
from backdoorlab.data import as_tensors, clean_subset, load_dataset  # noqa: E402
from backdoorlab.defenses.mitigate import IBAU, NAD, FinePruning, FineTune  # noqa: E402
from backdoorlab.io import load_ground_truth, load_model, save_ground_truth, save_model, truth_path  # noqa: E402
from backdoorlab.metrics import evaluate  # noqa: E402
from backdoorlab.models import build  # noqa: E402
from backdoorlab.training import fit, init_weights  # noqa: E402
from backdoorlab.triggers import BlendTrigger, PatchTrigger  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "runs" / "repair"
RESULTS = ROOT / "benchmarks" / "results" / "repair.md"


def cells_path(setting: str) -> Path:
    return CACHE / f"cells-{setting}.json"

BENCH_CACHE = ROOT / "runs" / "bench-cache"  # benchmarks/badnets_mnist.py writes the same models here

# setting -> (dataset, trigger kind, epochs, batch size, lr, seed, cached file name)
# MNIST pixel / pattern are exactly benchmarks/badnets_mnist.py's models (seed i, 10 epochs), reused
# from its cache when present and rebuilt with the same recipe otherwise.
SETTINGS = {
    "mnist-pixel": ("mnist", "pixel", 10, 128, 0.05, 1, BENCH_CACHE / "mnist-badnets-1.safetensors"),
    "mnist-pattern": ("mnist", "pattern", 10, 128, 0.05, 2, BENCH_CACHE / "mnist-badnets-2.safetensors"),
    "mnist-blend": ("mnist", "blend", 4, 128, 0.05, 3, ROOT / "runs" / "detectors" / "blend-t8.safetensors"),
    "gtsrb-square": ("gtsrb", "square", 16, 128, 0.02, 4, ROOT / "runs" / "filter" / "gtsrb-badnets-square.safetensors"),
}


def make_trigger(kind: str, shape):
    if kind == "pixel":
        return PatchTrigger.single_pixel(shape)
    if kind == "pattern":
        return PatchTrigger.badnets_pattern(shape)
    if kind == "square":
        return PatchTrigger.square(shape, 4)
    return BlendTrigger.random_noise(shape, alpha=0.2, generator=torch.Generator().manual_seed(1234))


def ensure_model(setting: str):
    """(model, goal, train, test) for ``setting``; trains and caches the backdoored model once."""
    name, kind, epochs, bs, lr, seed, path = SETTINGS[setting]
    train, test = load_dataset(name, "train", DATA), load_dataset(name, "test", DATA)
    if not path.exists():
        g = torch.Generator().manual_seed(seed)
        trig = make_trigger(kind, train.info.input_shape)
        poisoned = BadNets(trigger=trig, target=0, rate=0.1).poison(train, generator=g)
        info = train.info
        model = init_weights(build("badnets-cnn", input_shape=info.input_shape,
                                   num_classes=info.num_classes, mean=info.mean, std=info.std), g)
        log = fit(model, poisoned.dataset, epochs=epochs, batch_size=bs, lr=lr, generator=g)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(path, model, dataset=info.to_json(), training={**log.to_json(), "epochs": epochs})
        save_ground_truth(truth_path(path), poisoned.goal, poisoned.poison_indices,
                          info={"attack": "badnets", "trigger": kind, "rate": 0.1, "target": 0})
    model, _ = load_model(path)
    goal, _, _ = load_ground_truth(truth_path(path))
    return model.eval(), goal, train, test


def methods() -> dict:
    """The four mitigators of issue 4 with the library defaults (what `backdoorlab repair` runs)."""
    return {"retraining": FineTune(), "Fine-Pruning": FinePruning(), "NAD": NAD(), "I-BAU": IBAU()}


def cell_key(method: str, mitigator, clean_spec) -> str:
    return f"{method}|{clean_spec}|{json.dumps(dataclasses.asdict(mitigator) if mitigator else {}, sort_keys=True, default=str)}"


def run_cell(setting: str, method: str, mitigator, clean_spec, cells: dict, fresh: bool = False) -> dict:
    """Repair one model with one method (cached in runs/repair/cells.json by setting/method/params;
    ``fresh``: recompute even when cached, e.g. to re-time a method beside another)."""
    key = cell_key(method, mitigator, clean_spec)
    if key in cells and not fresh:
        return cells[key]
    model, goal, train, test = ensure_model(setting)
    kind, n = clean_spec
    g = torch.Generator().manual_seed(0)
    clean = clean_subset(train, fraction=n, generator=g) if kind == "fraction" else \
        clean_subset(train, per_class=n, generator=g)
    if mitigator is None:
        ev, wall, cpu = evaluate(model, test, goal), 0.0, 0.0
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        rep = mitigator.repair(model, clean, generator=torch.Generator().manual_seed(1))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        ev = evaluate(rep.model, test, goal)
    cell = {"ca": ev.clean_accuracy, "asr": ev.attack_success_rate, "ra": ev.robust_accuracy,
            "wall": wall, "cpu": cpu, "clean": len(clean)}
    CACHE.mkdir(parents=True, exist_ok=True)
    path = cells_path(setting)  # other processes may have added cells of this setting meanwhile
    cells.update(json.loads(path.read_text()) if path.exists() else {})
    cells[key] = cell
    path.write_text(json.dumps(cells, indent=1))
    print(f"{setting:16s} {method:22s} CA {100 * cell['ca']:6.2f} ASR {100 * cell['asr']:6.2f} "
          f"RA {100 * cell['ra']:6.2f}  {cpu:7.1f} s CPU {wall:7.1f} s wall", flush=True)
    return cell


def targeted_uap_share(model, x, y, radius: float, steps: int = 40) -> tuple[float, int]:
    """Backdoor proxy a defender can compute on held-out clean images: for every class c, one
    universal perturbation with ||δ||_2 <= radius, found by ``steps`` normalised gradient steps on
    CE(f(x + δ), c) (projected); returns the largest share of images (label != c) sent to c, and c."""
    best, arg = 0.0, -1
    g = torch.Generator().manual_seed(4)
    for c in range(model.head.out_features):
        xs = x[y != c]
        if len(xs) == 0:
            continue
        d = torch.zeros(1, *xs.shape[1:])
        for _ in range(steps):
            idx = torch.randint(0, len(xs), (min(100, len(xs)),), generator=g)
            d.requires_grad_(True)
            loss = F.cross_entropy(model(xs[idx] + d), torch.full((len(idx),), c))
            gr = torch.autograd.grad(loss, d)[0]
            d = (d - 0.5 * radius * gr / gr.norm().clamp_min(1e-12)).detach()
            d = d * torch.clamp(radius / d.norm().clamp_min(1e-12), max=1.0)
        with torch.no_grad():
            share = float((model(xs + d).argmax(1) == c).float().mean())
        if share > best:
            best, arg = share, c
    return best, arg


def select(setting: str, method: str, kind: str, amount: float, configs: list[dict],
           split_seed: int = 7) -> None:
    """Score hyper-parameter candidates on the defender's clean set only (80/20 split, seed 7 unless
    ``split_seed`` says otherwise: other seeds are other splits of the same defender's set)."""
    model, _, train, _ = ensure_model(setting)  # the goal and the test set are not used
    g = torch.Generator().manual_seed(0)
    clean = clean_subset(train, fraction=amount, generator=g) if kind == "fraction" else \
        clean_subset(train, per_class=int(amount), generator=g)
    x, y = as_tensors(clean)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    nv = len(y) // 5
    fit_set, xv, yv = (x[perm[nv:]], y[perm[nv:]]), x[perm[:nv]], y[perm[:nv]]
    radius = 0.1 * math.prod(xv.shape[1:]) ** 0.5
    cls = {"none": None, "retraining": FineTune, "Fine-Pruning": FinePruning, "NAD": NAD, "I-BAU": IBAU}[method]
    for cfg in configs:
        m, cpu, summary = model, 0.0, {}
        if cls is not None:
            c0 = time.process_time()
            rep = cls(**cfg).repair(model, fit_set, generator=torch.Generator().manual_seed(1))
            cpu, m, summary = time.process_time() - c0, rep.model.eval(), rep.summary
        with torch.no_grad():
            ca = float((m(xv).argmax(1) == yv).float().mean())
        share, c = targeted_uap_share(m, xv, yv, radius)
        print(json.dumps({"setting": setting, "method": method, "clean": [kind, amount], "config": cfg,
                          "split_seed": split_seed,
                          "held_out_ca": round(100 * ca, 2), "proxy_share": round(100 * share, 2),
                          "proxy_class": c, "cpu_s": round(cpu, 1),
                          "summary": {k: summary[k] for k in ("rounds", "lr", "teacher_lr", "uap_restarts")
                                      if k in summary}}),
              flush=True)


I100 = "I-BAU, 100 clean samples (defaults: 30 rounds of one step)"
# Notes of the last full run (text of benchmarks/results/repair.md that no cell holds).
DRAWS_TIMING_NOTE = ("The NAD and I-BAU cells of this run were computed with `--fresh` in two one-thread "
                     "processes running at the same time (`--no-table --draws --methods NAD --fresh`, the same "
                     "with I-BAU), on a CPU shared with other developers' jobs (load "
                     "average 15-20 on the 2 cores), so their CPU seconds compare with each other to about "
                     "+-25%; the one-start row's cells are cached from the 23:29-23:42 UTC runs (code before "
                     "the speed-up of this run).")

# Clean-set draws of ``--draws``: (clean_subset seed, repair seed).  The first is the table's draw
# (clean seed 0, repair seed 1); the others are benchmarks/grid_mnist_core.py --draw-check's
# (seed k for both), so the two scripts' numbers can be compared one to one.
DRAWS = [(0, 1), (3, 3), (1, 1), (4, 4), (5, 5)]


def draws_path() -> Path:
    return CACHE / "draws-mnist-pattern.json"


def draw_rows() -> dict:
    """Rows of the per-draw table: NAD and I-BAU with the library defaults, and I-BAU with one
    inner start a round (the default before the restarts, commit 055a474)."""
    return {"NAD": NAD(), "I-BAU": IBAU(),
            "I-BAU, one inner start (previous default)": IBAU(uap_restarts=1, restart_steps=0)}


def run_draws(rows: dict, fresh: tuple = ()) -> dict:
    """Each mitigator of ``rows`` on the MNIST BadNets-pattern model, one repair per 5% clean-set
    draw of DRAWS; cells cached in runs/repair/draws-mnist-pattern.json by method, parameters and
    draw (rows whose label is in ``fresh`` are recomputed)."""
    path = draws_path()
    cells = json.loads(path.read_text()) if path.exists() else {}
    model, goal, train, test = ensure_model("mnist-pattern")
    out: dict[str, list[dict]] = {}
    for label, m in rows.items():
        name = label.split(",")[0]  # the cache key names the method; the parameters tell the rows apart
        params = json.dumps(dataclasses.asdict(m), sort_keys=True, default=str)
        for cs, rs in DRAWS:
            key = f"{name}|{params}|{cs},{rs}"
            if key not in cells or label in fresh:
                g = torch.Generator().manual_seed(cs)
                clean = clean_subset(train, fraction=0.05, generator=g)
                rg = g if rs == cs else torch.Generator().manual_seed(rs)  # draw-check: one generator
                c0 = time.process_time()
                rep = m.repair(model, clean, generator=rg)
                cpu = time.process_time() - c0
                ev = evaluate(rep.model, test, goal)
                cells.update(json.loads(path.read_text()) if path.exists() else {})
                cells[key] = {"ca": ev.clean_accuracy, "asr": ev.attack_success_rate,
                              "ra": ev.robust_accuracy, "cpu": cpu, "draw": [cs, rs]}
                CACHE.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(cells, indent=1))
            c = cells[key]
            print(f"draws {name:6s} clean seed {cs} repair seed {rs}: CA {100 * c['ca']:6.2f} "
                  f"ASR {100 * c['asr']:6.2f} {c['cpu']:6.1f} s CPU", flush=True)
            out.setdefault(label, []).append(c)
    return out


def timing_path() -> Path:
    return CACHE / "timing-mnist-pattern.json"


def run_timing(repeats: int) -> dict:
    """NAD and I-BAU (library defaults) on the pattern model and the table's draw, alternated
    ``repeats`` times in this one process: CPU seconds of each repair, side by side (written to
    runs/repair/timing-mnist-pattern.json for the results file)."""
    import os
    import subprocess

    from _util import load_avg

    model, _, train, _ = ensure_model("mnist-pattern")
    clean = clean_subset(train, fraction=0.05, generator=torch.Generator().manual_seed(0))
    runs: dict[str, list[float]] = {"NAD": [], "I-BAU": []}
    for _ in range(repeats):
        for name, m in (("NAD", NAD()), ("I-BAU", IBAU())):
            c0 = time.process_time()
            m.repair(model, clean, generator=torch.Generator().manual_seed(1))
            runs[name].append(time.process_time() - c0)
            print(f"timing {name:6s} {runs[name][-1]:6.1f} s CPU (load {os.getloadavg()[0]:.1f})", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = {"runs": runs, "commit": commit, "load_at_end": load_avg(),
           "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}
    CACHE.mkdir(parents=True, exist_ok=True)
    timing_path().write_text(json.dumps(out, indent=1))
    return out


def timing_text(t: dict) -> str:
    """Markdown for the alternated NAD / I-BAU timing."""
    import statistics

    from _util import md_table

    nad, ibau = t["runs"]["NAD"], t["runs"]["I-BAU"]
    rows = [[f"run {i + 1}", f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}"] for i, (a, b) in enumerate(zip(nad, ibau))]
    rows.append(["median", f"{statistics.median(nad):.1f}", f"{statistics.median(ibau):.1f}",
                 f"{statistics.median(ibau) / statistics.median(nad):.2f}"])
    return (f"NAD and I-BAU (library defaults, the table's draw of the pattern model) alternated "
            f"{len(nad)} times in one one-thread process (`--timing {len(nad)}`, {t['when']} UTC, code at "
            f"{t['commit']} plus this change, load average at the end {t['load_at_end']}); CPU seconds of "
            f"`repair`:\n\n" + md_table(["", "NAD s", "I-BAU s", "I-BAU / NAD"], rows)
            + f"\n\nI-BAU was cheaper in {sum(b < a for a, b in zip(nad, ibau))} of {len(nad)} pairs.  One "
            f"method's CPU seconds varied by up to {100 * max(max(v) / min(v) - 1 for v in (nad, ibau)):.0f}% "
            "between its runs here (see the load average), so single ratios are noisy; compare medians.")


def draws_table(out: dict, before: dict) -> str:
    """Markdown: per draw and mean / median / worst over the draws."""
    import statistics

    from _util import md_table

    rows = []
    for name, cs in out.items():
        per = [f"{100 * c['ca']:.2f} / {100 * c['asr']:.2f} / {c['cpu']:.0f} s" for c in cs]
        asr, ca, cpu = [100 * c["asr"] for c in cs], [100 * c["ca"] for c in cs], [c["cpu"] for c in cs]
        ok = sum(1 for c in cs if c["asr"] <= 0.02 and before["ca"] - c["ca"] <= 0.015)
        rows.append([name] + per + [f"{statistics.mean(ca):.2f} / {statistics.mean(asr):.2f} / {statistics.mean(cpu):.0f} s",
                                    f"{statistics.median(ca):.2f} / {statistics.median(asr):.2f}",
                                    f"{min(ca):.2f} / {max(asr):.2f}", f"{ok} of {len(cs)}"])
    head = ["method"] + [f"draw {cs}" + (f" (repair seed {rs})" if rs != cs else "") for cs, rs in DRAWS]
    head += ["mean", "median", "worst (lowest CA / highest ASR)", "ASR <= 2% and CA drop <= 1.5 pt"]
    return md_table(head, rows)


def fmt(c: dict | None, seconds: bool = True) -> str:
    if c is None:
        return "-"
    s = f"{100 * c['ca']:.2f} / {100 * c['asr']:.2f} / {100 * c['ra']:.2f}"
    return s + (f" / {c['cpu']:.0f} s" if seconds and c["cpu"] else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", action="store_true", help="only train and cache the backdoored models")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", nargs="*", default=None, help=f"subset of {list(SETTINGS)}")
    ap.add_argument("--methods", nargs="*", default=None, help="subset of the method rows")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/repair.md")
    ap.add_argument("--draws", action="store_true",
                    help="also run NAD and I-BAU on the pattern model over five 5%% clean-set draws "
                         "(the table gets a per-draw section)")
    ap.add_argument("--no-table", action="store_true", help="compute no table cell (cached cells only)")
    ap.add_argument("--timing", type=int, default=0, metavar="N",
                    help="alternate NAD and I-BAU N times on the pattern model (CPU s side by side)")
    ap.add_argument("--fresh", action="store_true",
                    help="recompute the cells of --methods (all methods if not given) even when cached, "
                         "so their seconds are measured in this run, side by side")
    ap.add_argument("--select", nargs="+", metavar="ARG",
                    help="SETTING METHOD fraction|per_class AMOUNT [CONFIG_JSON ...]: score candidates on "
                         "the defender's clean set only")
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[7],
                    help="with --select: one 80/20 split of the defender's set per seed")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.select:
        setting, method, kind, amount, *configs = args.select
        for seed in args.split_seeds:
            select(setting, method, kind, float(amount), [json.loads(c) for c in configs] or [{}], seed)
        return 0
    settings = args.settings or list(SETTINGS)
    if args.prepare:
        for s in settings:
            t0 = time.perf_counter()
            model, goal, _, test = ensure_model(s)
            ev = evaluate(model, test, goal)
            print(f"{s}: CA {ev.clean_accuracy:.4f} ASR {ev.attack_success_rate:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        return 0
    five = ("fraction", 0.05)
    table: dict[str, dict[str, dict]] = {}
    for s in settings:
        cells = json.loads(cells_path(s).read_text()) if cells_path(s).exists() else {}
        table.setdefault("no defence", {})[s] = run_cell(s, "none", None, five, cells)
        for name, m in methods().items():
            if args.no_table or (args.methods and name not in args.methods):  # not recomputed: the cached cell, if any
                if cell_key(name, m, five) in cells:
                    table.setdefault(name, {})[s] = cells[cell_key(name, m, five)]
                continue
            table.setdefault(name, {})[s] = run_cell(s, name, m, five, cells, args.fresh)
        if s.startswith("mnist"):
            key100 = cell_key("I-BAU", IBAU(), ("per_class", 10))
            if args.no_table or (args.methods and "I-BAU" not in args.methods):
                if key100 in cells:
                    table.setdefault(I100, {})[s] = cells[key100]
            else:
                table.setdefault(I100, {})[s] = run_cell(s, "I-BAU", IBAU(), ("per_class", 10), cells, args.fresh)
    fresh = tuple(args.methods or ("NAD", "I-BAU")) if args.fresh else ()
    rows = {k: m for k, m in draw_rows().items() if not args.methods or k.split(",")[0] in args.methods}
    draws = run_draws(rows, fresh) if args.draws else None
    if args.timing:
        run_timing(args.timing)
    if not args.no_write:
        timing = json.loads(timing_path().read_text()) if timing_path().exists() else None
        write(table, settings, draws, timing)
    return 0


def write(table: dict, settings: list[str], draws: dict | None = None, timing: dict | None = None) -> None:
    from _util import load_avg, machine, md_table

    mn = [s for s in settings if s.startswith("mnist")]
    other = [s for s in settings if not s.startswith("mnist")]
    head = {"mnist-pixel": "BadNets single pixel", "mnist-pattern": "BadNets pattern", "mnist-blend": "blend",
            "gtsrb-square": "GTSRB subset, BadNets 4x4 square"}
    rows = [[m] + [fmt(table[m].get(s)) for s in mn] for m in table if any(s in table[m] for s in mn)]
    rows2 = [[m] + [fmt(table[m].get(s)) for s in other] for m in table if any(s in table[m] for s in other)]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    body = f"""## Model sanitization: retraining, Fine-Pruning, NAD, I-BAU (issue 4)

_Command:_ `.venv/bin/python benchmarks/repair.py{"".join(" " + a for a in sys.argv[1:])}` (one thread)  
_Run:_ {now} UTC; _Machine:_ {machine()}; load average at the end {load_avg()} — other
developers' jobs shared the 2 cores, so seconds are CPU seconds of this process (one thread),
which the sharing inflates far less than wall time.

Rows are computed by separate processes and cached in `runs/repair/cells-*.json`.\nEach cell: clean accuracy / attack success rate / robust accuracy (%, full test set) / CPU seconds
of `repair`. Defender: 5% of the training set, stratified (MNIST: 3,000 images), or 100 images
(10 per class) where the row says so. Every method runs with the library defaults (what
`backdoorlab repair --method M` runs). All attacks: 10% poison, all-to-one, BadNets CNN.
MNIST pixel / pattern models are `benchmarks/badnets_mnist.py`'s (10 epochs); blend = random-noise
key, alpha 0.2 (Chen et al.), target 8 (the model of `runs/detectors/`, 2 epochs; rebuilt with
target 0 and 4 epochs when absent).

{md_table(["method"] + [head[s] for s in mn], rows)}
"""
    if rows2:
        body += f"""
{md_table(["method"] + [head[s] for s in other], rows2)}

GTSRB subset: 13,070 training / 4,210 test images of `../shared/data`, 43 classes, BadNets CNN
(3x32x32), white 4x4 square bottom-right, 10% poison, target 0 (the model of `runs/filter/`,
trained 8 epochs at lr 0.02 + 8 at lr 0.01; rebuilt with one 16-epoch run when absent); defender
5% = 654 images.
"""
    if draws:
        base = table["no defence"]["mnist-pattern"]
        body += f"""
### Over clean-set draws: MNIST BadNets pattern, 5% clean set (`--draws`)

The table above repairs with one draw of the defender's 5% clean set.  Here NAD and I-BAU (library
defaults) repair the same pattern model once per draw of that set: five stratified 5% draws
(`clean_subset` seed 0 with repair seed 1 = the table's draw; seeds 3, 1, 4, 5 for both = the
draws of `benchmarks/grid_mnist_core.py --draw-check`).  Each cell: CA / ASR (%, full test set) /
CPU s of `repair`; statistics are over the {len(DRAWS)} draws (one repair each), not over test
images.  Cells cached in `runs/repair/draws-mnist-pattern.json` (recomputed when absent or with
`--fresh`).  {DRAWS_TIMING_NOTE}  Input model: CA {100 * base['ca']:.2f}, ASR {100 * base['asr']:.2f}; acceptance per draw: ASR <= 2% and CA
>= {100 * base['ca'] - 1.5:.2f}.

{draws_table(draws, base)}
"""
    def ca_asr(m: str, st: str) -> str:
        c = table.get(m, {}).get(st)
        return "-" if c is None else f"{100 * c['ca']:.2f} / {100 * c['asr']:.2f}"

    def sec(m: str, st: str) -> str:
        c = table.get(m, {}).get(st)
        return "-" if c is None else f"{c['cpu']:.0f} s"


    def draw_ok(m: str, what: str) -> str:
        if not draws or m not in draws:
            return "-"
        base = table["no defence"]["mnist-pattern"]["ca"]
        ok = [c["asr"] <= 0.02 if what == "asr" else base - c["ca"] <= 0.015 for c in draws[m]]
        return str(sum(ok))

    if timing:
        import statistics
        nad, ibau = statistics.median(timing["runs"]["NAD"]), statistics.median(timing["runs"]["I-BAU"])
        ci, cn = table.get("I-BAU", {}).get("mnist-pattern"), table.get("NAD", {}).get("mnist-pattern")
        asr_ok = ci is not None and cn is not None and ci["asr"] <= cn["asr"]
        timing_line = (f"alternated {len(timing['runs']['NAD'])} times in one process (section below), I-BAU "
                       f"took a median {ibau:.1f} s CPU and NAD {nad:.1f} s ({ibau / nad:.2f}x); with the ASRs "
                       f"above, \"I-BAU costs less time than NAD at equal or better ASR\" is "
                       + ("met" if ibau < nad and asr_ok else "not met") + " on this draw.")
        if ci is not None and cn is not None:
            timing_line += f"  The table's cells: I-BAU {ci['cpu']:.1f} s, NAD {cn['cpu']:.1f} s"
        if draws and "NAD" in draws and "I-BAU" in draws:
            timing_line += (f"; mean over the five draws: I-BAU {statistics.mean(c['cpu'] for c in draws['I-BAU']):.1f} s, "
                            f"NAD {statistics.mean(c['cpu'] for c in draws['NAD']):.1f} s")
        timing_line += "."
    else:
        timing_line = "see the table's seconds."
    timing_section = (f"### NAD vs I-BAU CPU time, alternated (`--timing`)\n\n{timing_text(timing)}\n\n"
                      if timing else "")
    body += f"""
Reading the table (this run):
- Defaults were chosen on the defender's clean set only (`benchmarks/repair.py --select`: 80/20
  split of the clean set, held-out clean accuracy and a targeted universal-perturbation proxy; see
  the docstrings of `nad.py` / `i_bau.py` and `docs/repair.md`); the test set only fills this table.
  Change since the previous run (23:45 UTC): I-BAU's code got faster without changing the method
  (`i_bau.py`, "Implementation and cost": delta's contribution at the first convolution is
  computed once for the batch instead of one input gradient per image; same losses and gradients
  to float rounding).  Recomputed in this run (01:19-01:39 UTC, five one-thread
  processes at once, load average 13-21): `--settings mnist-pattern --methods NAD I-BAU --fresh
  --no-write` (NAD, then I-BAU, then I-BAU with 100 samples, one process), `--settings
  mnist-pixel mnist-blend gtsrb-square --methods I-BAU --fresh --no-write`, the two draw runs
  below and `--no-table --timing 3 --no-write`; this file was then written from the cache by the
  command above.  The other cells (retraining, Fine-Pruning, NAD off the pattern model) are the
  cached cells of the previous runs, methods unchanged, timed in other sessions: compare their
  seconds with I-BAU's only loosely.
- Acceptance setting, MNIST BadNets pattern, the table's draw: I-BAU {ca_asr("I-BAU", "mnist-pattern")} in
  {sec("I-BAU", "mnist-pattern")}, NAD {ca_asr("NAD", "mnist-pattern")} in {sec("NAD", "mnist-pattern")} (input CA 99.25).  Over five draws (section above) I-BAU
  meets ASR <= 2% on {draw_ok("I-BAU", "asr")} of 5 draws and the CA budget on {draw_ok("I-BAU", "ca")}; NAD meets ASR <= 2% on
  {draw_ok("NAD", "asr")} and the CA budget on {draw_ok("NAD", "ca")}.  Cost: {timing_line}
  The speed-up is far from the paper's 13x: our NAD is small (5 + 10 epochs of a 281k-parameter
  CNN on 3,000 images) and each I-BAU outer step costs K = 5 products through the fixed-point map.
  Single pixel: I-BAU {ca_asr("I-BAU", "mnist-pixel")} in {sec("I-BAU", "mnist-pixel")}, NAD {ca_asr("NAD", "mnist-pixel")} in {sec("NAD", "mnist-pixel")} (NAD's cell from an earlier session).
- 100 clean samples: I-BAU runs 30 rounds of (inner solve, one outer step) (`min_outer_steps` 30,
  chosen on an 80/20 split of the 100 images: 10 steps left the proxy at 100% on the target),
  each with one inner start (the starts are spread over the rounds: at least 4 x 2 in all);
  pattern {ca_asr(I100, "mnist-pattern")}, pixel {ca_asr(I100, "mnist-pixel")}: ASR <= 10% {"met" if all(table.get(I100, {}).get(st, {"asr": 1})["asr"] <= 0.10 for st in ("mnist-pattern", "mnist-pixel")) else "not met"}.
- Blend (random-noise key, alpha 0.2): NAD {ca_asr("NAD", "mnist-blend")}, i.e. the fine-tuned
  teacher's level - NAD does not remove this backdoor (its student diverged at lr 0.1 on this
  model; the guard redid it at 0.01).  I-BAU: {ca_asr("I-BAU", "mnist-blend")} (previous run, one inner start: 97.52 / 30.04; the
  restarts keep the largest-loss delta, which on this model is not the key).  Why I-BAU struggles
  (measured with one inner start): on the pattern model a successful inner solve sends 100% of
  test images to the target (cosine 0.52 with the mean trigger perturbation), on the blend model
  0.1% (cosine -0.11, also with 100 steps or eps = 6) although the blend perturbation (norm 2.78)
  lies inside the eps = 3 ball: the noise key is a maximiser that local ascent does not reach.
  The paper's CIFAR-10 blend key is a smooth natural image.  BackdoorBench also reports NAD and
  I-BAU weak against Blended (ASR 97.7% and 50.5% on CIFAR-10).
- GTSRB subset: NAD {ca_asr("NAD", "gtsrb-square")}, about retraining's ASR ({ca_asr("retraining", "gtsrb-square")}) - NAD's teacher keeps much
  of this backdoor.  I-BAU (654 samples = 7 steps a round, so `min_outer_steps` gives 5 rounds of
  2 inner starts): {ca_asr("I-BAU", "gtsrb-square")}.  With one start its inner perturbation did not find the 4x4
  square: the mean trigger perturbation has norm 4.95 (> eps = 3), and the perturbation found had
  cosine -0.003 with it and sent 2.5% of test images to the target (eps = 6: -0.013, 0.2%); this
  model has stronger universal adversarial directions than its backdoor (the defender-side proxy
  reaches 100% for some class at L2 5.5 before and after repair).  On the 80/20 split eps = 5.9
  lowered held-out clean accuracy further (63.1% vs 76.9% at eps = 3), so eps stayed 3.  I-BAU's
  CA cost here comes from the outer Adam steps (lr 1e-3, official) on a model trained with SGD at
  lr 0.01-0.02; not tuned.  Fine-Pruning: {ca_asr("Fine-Pruning", "gtsrb-square")}.
- Fine-Pruning reaches 0.4-5.3% ASR at a 0.1-0.6 pt CA cost on MNIST; plain retraining (lr 0.01)
  leaves the backdoor intact.

{timing_section}Published anchors (not the same models or data; CA / ASR in %):

| method | setting | before | after | source |
|---|---|---|---|---|
| NAD | CIFAR-10, WRN-16-1, BadNets grid, 10% poison, 5% clean | 85.65 / 100 | 82.12 / 3.57 | NAD README |
| NAD | CIFAR-10, PreAct-ResNet18, BadNets 10% (BackdoorBench) | 91.32 / 95.03 | 89.87 / 2.14 | BackdoorBench results.csv |
| I-BAU | same, BadNets 5% (BackdoorBench) | - | 89.21 / 0.81 | BackdoorBench results.csv |
| Fine-Pruning | same, BadNets 10% (BackdoorBench) | 91.32 / 95.03 | 91.31 / 57.13 | BackdoorBench results.csv |
| retraining (FT) | same | 91.32 / 95.03 | 89.96 / 1.48 | BackdoorBench results.csv |
| I-BAU | CIFAR-10 / GTSRB | - | "more than 13x faster than the most efficient baseline"; effective with 100 clean samples | paper abstract |
"""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(body)
    print(body)


if __name__ == "__main__":
    raise SystemExit(main())
