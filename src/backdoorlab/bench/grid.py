"""Experiment grids: dataset x architecture x attack x defense x seed, from a TOML file.

    name = "nc-digits"
    datasets = ["digits"]                 # any of digits, mnist, cifar10, gtsrb
    architectures = ["digits-cnn"]        # optional; default: each dataset's standard one
    seeds = [0, 1, 2]
    data_dir = "../shared/data"           # optional (relative to the grid file)
    clean_fraction = 0.05                 # defender's clean share of the training split
    [train]                               # optional overrides of epochs / batch_size / lr
    epochs = 30
    [[attacks]]                           # "none" = a clean model (the twin every defense must pass)
    method = "none"
    [[attacks]]
    method = "badnets"
    params = { trigger = "pattern", target = 0, rate = 0.1 }
    [[attacks]]                           # per-attack overrides (optional):
    method = "badnets"
    params = { trigger = "square:3", target = 0, rate = 0.1 }
    train = { epochs = 6 }                #   training of this attack's models (over [train])
    seeds = [0]                           #   this attack's seeds (over the global seeds)
    defenses = ["none", "strip"]          #   pair it only with these defenses (default: all)
    [[defenses]]                          # any registry entry: detector, mitigator, filter, sanitizer
    method = "neural-cleanse"
    params = { epochs = 20 }
    clean_fraction = 0.10                 # optional: this defense's clean share (over the global one)

Cells run defense by defense (all models first when "none" is the first defense), so a defense
listed last runs last.  Every cell is a plain JSON-able dict; its identity is the sha256 of its
canonical JSON (``config_hash``), which is what makes a killed grid resumable without duplicates.
The hash covers the settings, not the library's code: after a defense's code changes, delete its
rows (``DELETE FROM cells WHERE defense = ...``) and re-run to recompute them.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Grid:
    name: str
    cells: tuple[dict, ...]
    source: str


def config_hash(cell: dict) -> str:
    return hashlib.sha256(json.dumps(cell, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


OPTIONS = {"attacks": ("train", "defenses", "seeds"), "defenses": ("clean_fraction",)}


def _entries(raw: Any, what: str) -> list[tuple[dict, dict]]:
    """(entry, options) per table: entry = {method, params} (what the cell and its hash hold),
    options = the per-entry overrides of OPTIONS[what]."""
    if raw is None:
        return [({"method": "none", "params": {}}, {})]
    if not isinstance(raw, list) or not all(isinstance(e, dict) and "method" in e for e in raw):
        raise ValueError(f"grid {what} must be a list of tables with a 'method' key; got {raw!r}.")
    out = []
    for e in raw:
        unknown = set(e) - {"method", "params", *OPTIONS[what]}
        if unknown:
            raise ValueError(f"grid {what} entry {e['method']!r} has unknown keys {sorted(unknown)}; "
                             f"allowed: method, params, {', '.join(OPTIONS[what])}.")
        out.append(({"method": str(e["method"]), "params": dict(e.get("params", {}))},
                    {k: e[k] for k in OPTIONS[what] if k in e}))
    return out


def load_grid(path: str | Path) -> Grid:
    """Parse a grid file into its cells (validated against the registries)."""
    from ..models import DEFAULT_ARCH

    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"grid file {path} not found.") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e}).") from None
    datasets = spec.get("datasets", ["digits"])
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{path}: seeds must be a list of integers; got {seeds!r}.")
    data_dir = spec.get("data_dir")
    if data_dir is not None:
        data_dir = str((path.parent / data_dir).resolve())
    attacks, defenses = _entries(spec.get("attacks"), "attacks"), _entries(spec.get("defenses"), "defenses")
    names = {d["method"] for d, _ in defenses}
    for e, opt in attacks:
        validate_method(e["method"], "attack")
        only = opt.get("defenses")
        if only is not None and (not isinstance(only, list) or not set(only) <= names):
            raise ValueError(f"{path}: attack {e['method']!r} defenses must be a list of the grid's defense "
                             f"methods {sorted(names)}; got {only!r}.")
        s = opt.get("seeds", seeds)
        if not isinstance(s, list) or not all(isinstance(v, int) for v in s):
            raise ValueError(f"{path}: attack {e['method']!r} seeds must be a list of integers; got {s!r}.")
        if not isinstance(opt.get("train", {}), dict):
            raise ValueError(f"{path}: attack {e['method']!r} train must be a table; got {opt['train']!r}.")
    for e, opt in defenses:
        validate_method(e["method"], "defense")
        cf = opt.get("clean_fraction", 0.5)
        if not isinstance(cf, (int, float)) or not 0 < cf <= 1:
            raise ValueError(f"{path}: defense {e['method']!r} clean_fraction must be in (0, 1]; got {cf!r}.")
    cells = []
    # defense-major: every model is trained by the first defense's cells, and the defenses listed
    # last run last (cell identity does not depend on the order).
    for ds, (dfn, dopt), (atk, aopt) in itertools.product(datasets, defenses, attacks):
        if "defenses" in aopt and dfn["method"] not in aopt["defenses"]:
            continue
        for seed, arch in itertools.product(aopt.get("seeds", seeds),
                                            spec.get("architectures", [DEFAULT_ARCH.get(ds, "digits-cnn")])):
            cells.append({"grid": spec.get("name", path.stem), "dataset": ds, "arch": arch, "attack": atk,
                          "defense": dfn, "seed": int(seed),
                          "train": {**spec.get("train", {}), **aopt.get("train", {})},
                          "clean_fraction": float(dopt.get("clean_fraction", spec.get("clean_fraction", 0.05))),
                          "data_dir": data_dir, "fpr": float(spec.get("fpr", 0.05))})
    return Grid(name=spec.get("name", path.stem), cells=tuple(cells), source=str(path))


def role_of(method: str) -> str:
    """Which registry a defense name lives in: detector, mitigator, filter, purifier or sanitizer."""
    from ..defenses.detect import DETECTORS
    from ..defenses.filter import FILTERS, PURIFIERS
    from ..defenses.mitigate import MITIGATORS
    from ..defenses.sanitize import SANITIZERS

    for role, reg in (("detector", DETECTORS), ("mitigator", MITIGATORS), ("filter", FILTERS),
                      ("purifier", PURIFIERS), ("sanitizer", SANITIZERS)):
        if method in reg:
            return role
    raise ValueError(f"defense method {method!r} is in no registry; known: "
                     f"{sorted(set(DETECTORS) | set(MITIGATORS) | set(FILTERS) | set(PURIFIERS) | set(SANITIZERS))}.")


def validate_method(method: str, kind: str) -> None:
    if method == "none":
        return
    if kind == "attack":
        if method not in ("badnets", "blend"):
            raise ValueError(f"grid attack method must be 'none', 'badnets' or 'blend'; got {method!r}.")
    else:
        role_of(method)
