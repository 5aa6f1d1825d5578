"""THE detection population of MNIST models with known ground truth (issues 3 and 7): the single
builder used by ``neural_cleanse_detection.py`` and ``detectors.py``.

``population(...)`` trains (or loads from ``runs/population/``; populations "b" to "f", the same members
with fresh seeds, from ``runs/population-b/`` to ``runs/population-f/``; written with ``io.save_model`` /
``io.save_ground_truth``) 10 BadNets-infected models with different targets (all ten labels),
trigger kinds (single pixel, BadNets 3x3 pattern, 3x3 / 4x4 / 5x5 squares, random-noise blend at
alpha 0.1 and 0.2) and positions, and 10 clean models that differ only by seed.  Separately,
``calibration()`` gives 12 more clean models (``calib-s*``, other seeds) on which detectors may
calibrate a threshold; they are never part of the evaluation population.

Recipe: the badnets-cnn, 1 epoch of SGD (lr 0.05, batch 64, cosine) on the full 60,000-image MNIST
training split, BadNets poisoning rate 10%.  A member counts only when it passes its bar on the
10,000-image MNIST test set: clean CA >= 98%, infected ASR >= 90% (and CA >= 98%).  A member that
fails is retrained with another seed and 2 more epochs (at most ``MAX_ATTEMPTS`` times); one that
still fails raises - a failed backdoor is never counted as infected.  CA / ASR / attempts of every
member are stored in its JSON sidecar and printed by the script.

    from population import population, calibration
    for m in population(): m.name, m.model, m.infected, m.goal, m.target, m.ca, m.asr

Run as a script to build the cache and print the members' CA / ASR (shard to use both cores):
    OMP_NUM_THREADS=1 python benchmarks/population.py [--shard 0/2] [--calib]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import ROOT, SHARED_DATA, md_table  # noqa: E402

CACHE = ROOT / "runs" / "population"
# population "a" is the evaluation population; "b" and "c" have the same members (names, triggers, targets)
# with fresh seeds for training, poisoning and blend noise - blind re-tests of rules fixed after "a" (and
# "b") were seen; "d" (declared in the sixth session before it was trained) re-tests the DF-TND rule change
# of that session; "e" (declared in the seventh session before it was trained, scanned only after that
# session's DL-TND rule is committed) re-tests it and every other rule in use; "f" (declared in the eighth
# session before it was trained, scanned only after that session's DF-TND change is committed) re-tests it
POPULATIONS = {"a": (CACHE, 0), "b": (ROOT / "runs" / "population-b", 50_000),
               "c": (ROOT / "runs" / "population-c", 100_000), "d": (ROOT / "runs" / "population-d", 150_000),
               "e": (ROOT / "runs" / "population-e", 200_000), "f": (ROOT / "runs" / "population-f", 250_000)}
SHAPE = (1, 28, 28)
EPOCHS, RATE = 1, 0.1
MIN_CA, MIN_ASR = 0.98, 0.90
MAX_ATTEMPTS = 3

# name: (trigger kind, position or alpha, target).  Targets cover all ten labels.
INFECTED = {
    "pixel-br-t0": ("pixel", (24, 24), 0),      # (row, col): 3 px in from the corner (see PIXEL note)
    "pixel-tl-t1": ("pixel", (3, 3), 1),
    "pattern-br-t2": ("pattern", "bottom-right", 2),
    "patch5-bl-t3": ("patch5", "bottom-left", 3),
    "pattern-bl-t4": ("pattern", "bottom-left", 4),
    "patch3-br-t5": ("patch3", "bottom-right", 5),
    "patch4-tl-t6": ("patch4", "top-left", 6),
    "patch3-center-t7": ("patch3", "center", 7),
    "blend10-t8": ("blend", 0.1, 8),
    "blend20-t9": ("blend", 0.2, 9),
}
CLEAN = [f"clean-s{i}" for i in range(10)]
CALIB = [f"calib-s{i}" for i in range(12)]
SEEDS = ({name: 100 + i for i, name in enumerate(INFECTED)} | {n: 200 + i for i, n in enumerate(CLEAN)}
         | {n: 900 + i for i, n in enumerate(CALIB)})
# build order: infected and clean interleaved (a partial build stays balanced), slow pixel triggers last
ORDER = [n for pair in zip(sorted(INFECTED, key=lambda n: INFECTED[n][0] == "pixel"), CLEAN) for n in pair]
# PIXEL note: a single pixel 1 px from the corner (the BadNets default, margin 1) is seen by one 5x5
# window of conv1 and did not implant in one epoch (ASR 1.0% at CA 98.0%, seed 100); 3 px in it is
# seen by 25 windows.


@dataclass
class Member:
    name: str
    model: torch.nn.Module
    infected: bool
    goal: object | None          # TriggerGoal for infected members
    target: int | None
    kind: str                    # pixel / pattern / patch3 / ... / blend / clean
    ca: float                    # clean accuracy on the MNIST test set
    asr: float | None            # attack success rate on the MNIST test set (infected only)
    attempts: int                # trainings needed to pass the bar
    cache: Path = CACHE          # folder of the model file and its cached verdicts


def make_trigger(kind: str, where, seed: int):
    from backdoorlab.triggers import BlendTrigger, PatchTrigger

    if kind == "pixel":
        return PatchTrigger.single_pixel(SHAPE, where)
    if kind == "pattern":
        return PatchTrigger.badnets_pattern(SHAPE, where)
    if kind.startswith("patch"):
        return PatchTrigger.square(SHAPE, int(kind[5:]), where)
    if kind == "blend":
        return BlendTrigger.random_noise(SHAPE, alpha=float(where), generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"population: unknown trigger kind {kind!r}; use pixel, pattern, patchN or blend.")


def _train(dataset, info, seed: int, epochs: int):
    from backdoorlab.models import build
    from backdoorlab.training import fit, init_weights

    g = torch.Generator().manual_seed(seed)
    m = init_weights(build("badnets-cnn", input_shape=info.input_shape, num_classes=info.num_classes,
                           mean=info.mean, std=info.std), g)
    fit(m, dataset, epochs=epochs, batch_size=64, lr=0.05, generator=g)
    return m.eval()


def _build(name: str, spec, train, test, path: Path, log, offset: int = 0):
    """Train ``name`` until it passes the bar; save model, ground truth and CA/ASR."""
    from backdoorlab.attacks import BadNets
    from backdoorlab.io import save_ground_truth, save_model, truth_path
    from backdoorlab.metrics import evaluate

    history = []
    for attempt in range(MAX_ATTEMPTS):
        seed, epochs = SEEDS[name] + offset + 1000 * attempt, EPOCHS + 2 * attempt
        t0 = time.perf_counter()
        if spec:
            kind, where, target = spec
            poisoned = BadNets(trigger=make_trigger(kind, where, SEEDS[name] + offset), target=target, rate=RATE).poison(
                train, generator=torch.Generator().manual_seed(seed))
            model, goal, idx = _train(poisoned.dataset, train.info, seed, epochs), poisoned.goal, poisoned.poison_indices
        else:
            model, goal, idx = _train(train, train.info, seed, epochs), None, None
        ev = evaluate(model, test, goal)
        ca, asr = ev.clean_accuracy, ev.attack_success_rate
        ok = ca >= MIN_CA and (goal is None or asr >= MIN_ASR)
        history.append({"seed": seed, "epochs": epochs, "ca": ca, "asr": asr, "passed": ok,
                        "seconds": round(time.perf_counter() - t0, 1)})
        log(f"{name} attempt {attempt + 1}: seed {seed}, {epochs} epochs, CA {100 * ca:.2f}%"
            + ("" if asr is None else f", ASR {100 * asr:.2f}%") + f" ({'pass' if ok else 'FAIL'}, "
            f"{history[-1]['seconds']:.0f} s)")
        if ok:
            save_model(path, model, dataset=train.info.to_json(),
                       training={"epochs": epochs, "seed": seed, "train_size": len(train), "rate": RATE},
                       extra={"population": name, "ca": ca, "asr": asr, "attempts": history})
            if goal is not None:
                save_ground_truth(truth_path(path), goal, idx, info={"attack": "badnets", "population": name})
            return
    path.with_suffix(".failed.json").write_text(json.dumps(history, indent=1))
    log(f"population: {name} failed the bar (CA >= {MIN_CA}, ASR >= {MIN_ASR}) in {MAX_ATTEMPTS} attempts; "
        "it is left out (a failed backdoor never counts as infected).")


def _members(names, *, data_dir, cache: Path, train_missing: bool, log, offset: int = 0) -> list[Member]:
    from backdoorlab.data import load_dataset
    from backdoorlab.io import load_ground_truth, load_model, truth_path

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    train = test = None
    out = []
    for i, name in enumerate(names):
        spec = INFECTED.get(name)
        path = cache / f"{name}.safetensors"
        if not path.exists():
            if not train_missing or path.with_suffix(".failed.json").exists():
                continue
            lock = path.with_suffix(".lock")      # several builder processes share the work
            try:
                os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                log(f"{name}: being built by another process ({lock.name}); skipped")
                continue
            try:
                if train is None:
                    train, test = load_dataset("mnist", "train", data_dir), load_dataset("mnist", "test", data_dir)
                log(f"training {name} ({i + 1}/{len(names)})")
                _build(name, spec, train, test, path, log, offset)
            finally:
                lock.unlink()
            if not path.exists():
                continue
        model, meta = load_model(path)
        extra = meta.get("extra", meta)
        goal = load_ground_truth(truth_path(path))[0] if spec else None
        out.append(Member(name=name, model=model.eval(), infected=spec is not None, goal=goal,
                          target=spec[2] if spec else None, kind=spec[0] if spec else "clean",
                          ca=float(extra["ca"]), asr=None if extra.get("asr") is None else float(extra["asr"]),
                          attempts=len(extra["attempts"]), cache=cache))
    return out


def population(*, data_dir=SHARED_DATA, which: str = "a", infected: bool = True, clean: bool = True,
               shard: tuple[int, int] = (0, 1), train_missing: bool = True, log=print) -> list[Member]:
    """The evaluation population ``which`` (ground truth travels in ``Member``, never to the defense)."""
    cache, offset = POPULATIONS[which]
    names = [n for n in ORDER if (n in INFECTED and infected) or (n in CLEAN and clean)]
    names = [n for i, n in enumerate(names) if i % shard[1] == shard[0]]
    return _members(names, data_dir=data_dir, cache=cache, train_missing=train_missing, log=log, offset=offset)


def calibration(*, data_dir=SHARED_DATA, cache: Path = CACHE, train_missing: bool = True, log=print) -> list[Member]:
    """Extra clean models (other seeds) for threshold calibration; disjoint from ``population()``."""
    return _members(CALIB, data_dir=data_dir, cache=cache, train_missing=train_missing, log=log)


# ---- cached detector verdicts (shared by neural_cleanse_detection.py and detectors.py) ----------------
SOURCE_KEYED = ("dl-tnd", "df-tnd", "neural-cleanse")  # verdicts recomputed when these detectors' code changes


def detector_inputs(name: str, train):
    """(clean set, generator) exactly as ``backdoorlab scan --seed 0`` builds them: Neural Cleanse gets
    the scan default (5% of the training split), DL-TND one clean image per class
    (``--clean-per-class 1``), data-free detectors nothing (``--no-data``)."""
    from backdoorlab.data import clean_subset
    from backdoorlab.defenses.detect import DETECTORS

    g = torch.Generator().manual_seed(0)
    if getattr(DETECTORS[name], "data_free", False):
        return None, g
    if name == "dl-tnd":
        return clean_subset(train, per_class=1, generator=g), g
    return clean_subset(train, fraction=0.05, generator=g), g


def _code_hash(src: bytes) -> str:
    """sha1 (10 hex digits) of a module's syntax tree without docstrings (comments are not in it)."""
    import ast
    import hashlib

    tree = ast.parse(src)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha1(ast.dump(tree).encode()).hexdigest()[:10]


def _source_hashes(name: str) -> tuple[str, str]:
    """(code hash, file hash) of detector ``name``'s module.  The code hash is taken over the syntax tree
    without docstrings, so editing prose does not re-run the detector; the file hash keyed the caches
    before, and a verdict found under it was made by this very file."""
    import hashlib
    import inspect

    from backdoorlab.defenses.detect import DETECTORS

    src = Path(inspect.getfile(DETECTORS[name])).read_bytes()
    return "code-" + _code_hash(src), hashlib.sha1(src).hexdigest()[:10]


@functools.lru_cache(maxsize=None)   # one walk per detector and process (the sources do not change under it)
def _dependency_hashes(name: str) -> dict[str, str]:
    """Code hash of every backdoorlab module that detector ``name``'s module imports, directly or not
    (itself excluded: it is in the cache key).  Recorded beside each new verdict, so that a cached verdict
    made before one of them changed is reported as stale instead of silently reused."""
    import ast
    import inspect

    import backdoorlab
    from backdoorlab.defenses.detect import DETECTORS

    root = Path(backdoorlab.__file__).resolve().parent
    start = Path(inspect.getfile(DETECTORS[name])).resolve()

    def module_file(parts: list[str]) -> Path | None:
        base = root.joinpath(*parts)
        for f in (base.with_suffix(".py"), base / "__init__.py"):
            if f.is_file():
                return f
        return None

    seen, todo, out = {start}, [start], {}
    while todo:
        f = todo.pop()
        pkg = list(f.relative_to(root).parent.parts)
        for node in ast.walk(ast.parse(f.read_bytes())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg[:len(pkg) - node.level + 1]
                elif (node.module or "").split(".")[0] == "backdoorlab":
                    base = []
                else:
                    continue
                mod = [p for p in (node.module or "").split(".") if p]
                mod = mod[1:] if not node.level else mod
                targets = [base + mod] + [base + mod + [a.name] for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [n.name.split(".")[1:] for n in node.names if n.name.split(".")[0] == "backdoorlab"]
            for t in targets:
                g = module_file(t)
                if g is not None and g not in seen:
                    seen.add(g)
                    todo.append(g)
                    out[g.relative_to(root).as_posix()] = _code_hash(g.read_bytes())
    return dict(sorted(out.items()))


def stale_dependencies(name: str, rec: dict | None) -> list[str] | None:
    """The imported modules (``_dependency_hashes``) whose code changed since verdict ``rec`` of detector ``name``
    was computed: [] when none did, None when ``rec`` carries no record (made before the sixth session's
    8c9a68e, or a detector whose verdicts are not source-keyed) and cannot be checked."""
    if rec is None or name not in SOURCE_KEYED or "dependencies" not in rec:
        return None
    now, then = _dependency_hashes(name), rec["dependencies"]
    return sorted(m for m in set(now) | set(then) if now.get(m) != then.get(m))


def cached_verdict(member: Member, name: str, train, overrides: dict | None = None, *, run: bool = True,
                   log=print) -> dict | None:
    """The verdict of detector ``name`` (registry name, library defaults + ``overrides``) on ``member``,
    run once and cached in ``runs/population/NAME.verdicts.json`` (so an interrupted benchmark resumes).
    Returns {backdoored, score, threshold, suspects, seconds, evidence} (evidence = ``to_json()``), plus
    ``dependencies`` (``_dependency_hashes``) for verdicts computed since the sixth session: a cached one whose
    imported modules changed since is logged with a WARNING."""
    from backdoorlab.defenses.detect import DETECTORS

    overrides = overrides or {}
    key = legacy = f"{name}:{json.dumps(overrides, sort_keys=True)}"
    if name in SOURCE_KEYED:
        code, file = _source_hashes(name)
        key, legacy = f"{key}:{code}", f"{key}:{file}"
    path = Path(member.cache) / f"{member.name}.verdicts.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    if key not in done and legacy in done:   # cached under the file hash by this same file: file it under the code
        done = json.loads(path.read_text())
        done[key] = done[legacy]
        path.write_text(json.dumps(done, indent=1))
    if key in done or not run:
        rec = done.get(key)
        changed = stale_dependencies(name, rec)
        if changed:
            log(f"{member.name} {name}: WARNING the cached verdict predates changes in {', '.join(changed)}; "
                f"delete its entry in {path} to re-run it")
        return rec
    lock = path.with_name(f"{member.name}.{name}.lock")     # several benchmark processes share the work
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        log(f"{member.name} {name}: being run by another process ({lock.name}); skipped")
        return None
    try:
        det = DETECTORS[name](**overrides)
        clean, g = detector_inputs(name, train)
        t0 = time.perf_counter()
        v = det.detect(member.model, clean, generator=g)
    finally:
        lock.unlink()
    ev = getattr(v.evidence, "to_json", None)
    rec = {"backdoored": bool(v.backdoored), "score": float(v.score), "threshold": float(v.threshold),
           "suspects": [int(s) for s in v.suspects], "seconds": time.perf_counter() - t0,
           "evidence": ev() if ev else None}
    if name in SOURCE_KEYED:
        rec["dependencies"] = dict(_dependency_hashes(name))
    done = json.loads(path.read_text()) if path.exists() else {}   # re-read: another shard may have written
    done[key] = rec
    path.write_text(json.dumps(done, indent=1))
    log(f"{member.name} {name}: {'BACKDOORED' if rec['backdoored'] else 'clean'} {rec['suspects']} "
        f"score {rec['score']:.3f} ({rec['seconds']:.0f} s)")
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shard", default="0/1", help="I/N: build members i with i %% N == I")
    ap.add_argument("--calib", action="store_true", help="build the calibration models too")
    ap.add_argument("--population", default="a", choices=sorted(POPULATIONS), help="which population (default a)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shard = tuple(int(v) for v in a.shard.split("/"))
    members = population(shard=shard, which=a.population)
    if a.calib:
        members += [m for i, m in enumerate(calibration()) if i % shard[1] == shard[0]]
    rows = [[m.name, m.kind, "-" if m.target is None else m.target, f"{100 * m.ca:.2f}",
             "-" if m.asr is None else f"{100 * m.asr:.2f}", m.attempts] for m in members]
    print(md_table(["model", "trigger", "target", "CA %", "ASR %", "attempts"], rows))
    print(json.dumps({m.name: {"ca": m.ca, "asr": m.asr} for m in members}))


if __name__ == "__main__":
    main()
