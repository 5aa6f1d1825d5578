"""Aggregate a grid's rows over seeds: mean ± 95% confidence half-width (Student t), as Markdown
and CSV, plus plots (ASR vs CA per defense; detection ROC per detector) when matplotlib is present."""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

METRICS = ("ca", "asr", "ra", "backdoored", "score", "frr", "far", "auroc", "precision", "recall", "seconds")


def _mean_ci(values: list[float]) -> tuple[float, float]:
    from scipy.stats import t

    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def aggregate(rows: list[dict]) -> tuple[list[str], list[list]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["status"] == "done":
            groups[(r["dataset"], r["arch"], r["attack"], r["defense"])].append(r)
    present = [k for k in METRICS if any(_value(r, k) is not None for g in groups.values() for r in g)]
    cols = ["dataset", "arch", "attack", "defense", "seeds"] + present
    table = []
    for key in sorted(groups):
        g = groups[key]
        line = [*key, len(g)]
        for k in present:
            vals = [v for v in (_value(r, k) for r in g) if v is not None]
            if not vals:
                line.append("")
                continue
            m, h = _mean_ci(vals)
            scale = 100 if k in ("ca", "asr", "ra", "backdoored", "frr", "far", "precision", "recall") else 1
            line.append(f"{scale * m:.2f}" + ("" if math.isnan(h) else f" ± {scale * h:.2f}"))
        table.append(line)
    return cols, table


def _value(r: dict, k: str):
    if k in r and r[k] is not None:
        return float(r[k])
    m = json.loads(r.get("metrics") or "{}")
    v = m.get(k)
    return None if v is None or isinstance(v, list) else float(v)


def markdown(cols, table) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(out + ["| " + " | ".join(map(str, r)) + " |" for r in table]) + "\n"


def csv_text(cols, table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows(table)
    return buf.getvalue()


def plots(rows: list[dict], out_dir: Path) -> list[Path]:
    """ASR vs CA per defense, and the detection ROC of each detector (attacked vs clean models)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from ..io import atomic_write_bytes

    done = [r for r in rows if r["status"] == "done"]
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    by_def = defaultdict(list)
    for r in done:
        if r["asr"] is not None:
            by_def[r["defense"]].append((100 * r["ca"], 100 * r["asr"]))
    for d, pts in sorted(by_def.items()):
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=d, s=18)
    ax.set_xlabel("clean accuracy %")
    ax.set_ylabel("attack success rate %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(_save(fig, out_dir / "asr_vs_ca.png", atomic_write_bytes))
    plt.close(fig)
    det = defaultdict(lambda: ([], []))
    for r in done:
        s = _value(r, "score")
        if s is not None:
            det[r["defense"]][0 if r["attack"] == "none" else 1].append(s)
    if det:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for d, (neg, pos) in sorted(det.items()):
            if neg and pos:
                thr = sorted(set(neg + pos), reverse=True)
                fpr = [0.0] + [sum(v >= t for v in neg) / len(neg) for t in thr]
                tpr = [0.0] + [sum(v >= t for v in pos) / len(pos) for t in thr]
                ax.plot(fpr, tpr, marker="o", label=d)
        ax.plot([0, 1], [0, 1], ls="--", c="grey")
        ax.set_xlabel("false-positive rate (clean models)")
        ax.set_ylabel("detection rate (attacked models)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(_save(fig, out_dir / "detection_roc.png", atomic_write_bytes))
        plt.close(fig)
    return files


def _save(fig, path: Path, writer) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return writer(path, buf.getvalue())
