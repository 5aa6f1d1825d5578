"""Shared benchmark plumbing: paths, machine description, sgemm peak, writing result tables."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "runs" / "bench-cache"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def load_avg() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` float32 matmul rate: this machine's practical peak for the ratios."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def write_result(name: str, body: str) -> Path:
    """Write ``benchmarks/results/NAME.md`` with the command, date and machine in the header."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    cmd = " ".join([Path(sys.executable).name if False else "python", *sys.argv])
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except Exception:
        rev = "?"
    head = (f"_Command:_ `{cmd}`  \n_Run:_ {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {rev}  \n"
            f"_Machine:_ {machine()}; load average at the end {load_avg()}\n\n")
    path = RESULTS / f"{name}.md"
    path.write_text(head + body.rstrip() + "\n")
    return path


def md_table(columns, rows) -> str:
    out = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(out)
