"""Shared by the certify_*.py benchmarks (issue 9): paths, the results-file header, markdown tables."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def threads() -> int:
    """Torch threads: $OMP_NUM_THREADS when set (1 on the shared machine: two spinning OpenMP threads
    per process waste the CPU when it is oversubscribed), else 2."""
    import os

    import torch

    n = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(n)
    return n


def header(title: str, command: str) -> list[str]:
    """Title and the reproducing command; ``_util.write_result`` adds command line, commit, machine, load."""
    return [f"# {title}", "", f"Reproduce: `{command}`.  Other developers' jobs shared the 2-core CPU (see the "
            "load average above), so absolute seconds are pessimistic; speed claims are ratios from one run.", ""]


def table(columns, rows) -> list[str]:
    out = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return out + [""]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def write(name: str, lines: list[str]) -> Path:
    from _util import write_result

    path = write_result(name, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {path}")
    return path
