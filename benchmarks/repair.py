"""Benchmark for issue 4: model sanitization under one protocol.

Rows = mitigation method (retraining, Fine-Pruning, NAD, I-BAU), columns = attack (BadNets single
pixel, BadNets pattern, blend), each cell CA / ASR / RA / seconds on MNIST with a 5% clean set;
plus I-BAU with only 100 clean samples and one CIFAR-10-subset setting.

    .venv/bin/python benchmarks/repair.py              # everything (trains + caches models first)
    .venv/bin/python benchmarks/repair.py --prepare    # only train and cache the backdoored models
    .venv/bin/python benchmarks/repair.py --select mnist-pattern ibau fraction 0.05 '{"rounds": 2}'
                                                       # default selection on the defender's data only

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


def run_cell(setting: str, method: str, mitigator, clean_spec, cells: dict) -> dict:
    """Repair one model with one method (cached in runs/repair/cells.json by setting/method/params)."""
    key = f"{method}|{clean_spec}|{json.dumps(dataclasses.asdict(mitigator) if mitigator else {}, sort_keys=True, default=str)}"
    if key in cells:
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


def select(setting: str, method: str, kind: str, amount: float, configs: list[dict]) -> None:
    """Score hyper-parameter candidates on the defender's clean set only (80/20 split, seed 7)."""
    model, _, train, _ = ensure_model(setting)  # the goal and the test set are not used
    g = torch.Generator().manual_seed(0)
    clean = clean_subset(train, fraction=amount, generator=g) if kind == "fraction" else \
        clean_subset(train, per_class=int(amount), generator=g)
    x, y = as_tensors(clean)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(7))
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
                          "held_out_ca": round(100 * ca, 2), "proxy_share": round(100 * share, 2),
                          "proxy_class": c, "cpu_s": round(cpu, 1),
                          "summary": {k: summary[k] for k in ("rounds", "lr", "teacher_lr") if k in summary}}),
              flush=True)


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
    ap.add_argument("--select", nargs="+", metavar="ARG",
                    help="SETTING METHOD fraction|per_class AMOUNT [CONFIG_JSON ...]: score candidates on "
                         "the defender's clean set only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.select:
        setting, method, kind, amount, *configs = args.select
        select(setting, method, kind, float(amount), [json.loads(c) for c in configs] or [{}])
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
            if args.methods and name not in args.methods:
                continue
            table.setdefault(name, {})[s] = run_cell(s, name, m, five, cells)
        if s.startswith("mnist") and (not args.methods or "I-BAU" in args.methods):
            table.setdefault("I-BAU, 100 clean samples (defaults: 30 rounds of one step)", {})[s] = run_cell(
                s, "I-BAU", IBAU(), ("per_class", 10), cells)
    if not args.no_write:
        write(table, settings)
    return 0


def write(table: dict, settings: list[str]) -> None:
    from _util import load_avg, machine, md_table

    mn = [s for s in settings if s.startswith("mnist")]
    other = [s for s in settings if not s.startswith("mnist")]
    head = {"mnist-pixel": "BadNets single pixel", "mnist-pattern": "BadNets pattern", "mnist-blend": "blend",
            "gtsrb-square": "GTSRB subset, BadNets 4x4 square"}
    rows = [[m] + [fmt(table[m].get(s)) for s in mn] for m in table if any(s in table[m] for s in mn)]
    rows2 = [[m] + [fmt(table[m].get(s)) for s in other] for m in table if any(s in table[m] for s in other)]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    body = f"""## Model sanitization: retraining, Fine-Pruning, NAD, I-BAU (issue 4)

_Command:_ `.venv/bin/python benchmarks/repair.py` (one thread)  
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
    body += """
Reading the table (this run):
- Defaults were chosen on the defender's clean set only (`benchmarks/repair.py --select`: 80/20
  split of the clean set, held-out clean accuracy and a targeted universal-perturbation proxy; see
  the docstrings of `nad.py` / `i_bau.py` and `docs/repair.md`); the test set only fills this table.
  Changes since the previous run: I-BAU 2 rounds instead of 1; NAD redoes a stage at lr / 10 when
  its accuracy on the clean set falls more than 10 pt below its reference (divergence guard).
- Acceptance setting, MNIST BadNets pattern: I-BAU 98.73 / 0.10 in 13 s, NAD 97.84 / 0.21 in 17 s
  (CA drops 0.52 and 1.41 pt from 99.25): I-BAU reaches an ASR no worse than NAD's at 80% of its
  CPU time.  (The ASRs are 9 and 19 of about 8,900 stamped images; the difference is within
  sampling noise, "no worse" is all the table shows.)  Single pixel: I-BAU 98.57 / 0.14 in 14 s,
  NAD 97.06 / 0.21 in 18 s.  The I-BAU speed-up is far from the paper's 13x: our NAD is small
  (5 + 10 epochs of a 281k-parameter CNN on 3,000 images) and each I-BAU step costs K = 5
  vector-Jacobian products through the fixed-point map.  Timing noise under this load: the same
  I-BAU computation (2 rounds on 2,400 images) took 9.5-13.3 s CPU in separate `--select` runs, so
  the 13 s vs 17 s gap is real but small; by operation count (2 x (20 inner + 30 outer steps of
  about 8 forward/backward passes) vs 5 + 10 epochs of 47 steps, the student's with a teacher
  forward) I-BAU does about 85% of NAD's work here.
- 100 clean samples: I-BAU runs 30 rounds of (inner solve, one outer step) (`min_outer_steps` 30,
  chosen on an 80/20 split of the 100 images: 10 steps left the proxy at 100% on the target);
  pattern 97.30 / 0.62 (CA -1.95 pt), pixel 94.87 / 0.38 (-4.37 pt): ASR <= 10% met.
- Blend (random-noise key, alpha 0.2): NAD no longer collapses (the student diverged at lr 0.1 on
  this model; the guard redid it at 0.01): 97.82 / 72.19, i.e. the fine-tuned teacher's level -
  NAD does not remove this backdoor.  I-BAU with 2 rounds: 97.52 / 30.04 (previous run, 1 round: 99.93%).  Why
  I-BAU struggles: its inner maximisation starts at delta = 0 and follows the clean-loss gradient;
  on the pattern model the perturbation it finds sends 100% of the first 2,000 test images to the
  target (cosine 0.52 with the mean trigger perturbation), on the blend model 0.1% (cosine -0.11,
  also with 100 steps or eps = 6) although the blend perturbation (norm 2.78) lies inside the eps = 3
  ball: the noise key is a maximiser that local ascent does not reach.  The paper's CIFAR-10 blend
  key is a smooth natural image.  BackdoorBench also reports NAD and I-BAU weak against Blended
  (ASR 97.7% and 50.5% on CIFAR-10).
- GTSRB subset: NAD no longer collapses (student diverged at lr 0.1, redone at 0.01):
  87.70 / 62.17, the same ASR as retraining (62.39) - NAD's teacher keeps much of this backdoor.
  I-BAU (654 samples = 7 steps a round, so `min_outer_steps` gives 5 rounds): 75.96 / 69.43.  Its
  inner perturbation does not find the 4x4 square: the mean trigger perturbation has norm 4.95
  (> eps = 3), and the perturbation found has cosine -0.003 with it and sends 2.5% of test images
  to the target (eps = 6: -0.013, 0.2%); this model has stronger universal adversarial directions
  than its backdoor (the defender-side proxy reaches 100% for some class at L2 5.5 before and
  after repair).  On the 80/20 split eps = 5.9 lowered held-out clean accuracy further (63.1% vs
  76.9% at eps = 3), so eps stayed 3.  I-BAU's 12 pt CA cost here comes from the outer Adam
  steps (lr 1e-3, official) on a model trained with SGD at lr 0.01-0.02; not tuned.  Fine-Pruning
  removes the square at an 8.5 pt CA cost.
- Fine-Pruning reaches 0.4-5.3% ASR at a 0.1-0.6 pt CA cost on MNIST; plain retraining (lr 0.01)
  leaves the backdoor intact.  The retraining and Fine-Pruning cells (methods unchanged) are the
  cached cells of the previous run (21:42 UTC); the NAD and I-BAU cells were recomputed.

Published anchors (not the same models or data; CA / ASR in %):

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
