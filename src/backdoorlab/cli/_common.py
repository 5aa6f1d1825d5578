"""Helpers shared by the CLI modules: common flags, data/model loading, progress bars, output."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def add_common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    """--json, --seed, --device and (when ``data``) --dataset / --data-dir."""
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    if data:
        p.add_argument("--dataset", default=None, choices=["digits", "mnist", "cifar10", "gtsrb"],
                       help="dataset (default: the model's own, else digits)")
        p.add_argument("--data-dir", default=None,
                       help="folder with the dataset files (default ~/.cache/backdoorlab)")


def device(args: argparse.Namespace) -> torch.device:
    if getattr(args, "device", None):
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def generator(args: argparse.Namespace) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(getattr(args, "seed", 0)))
    return g


def dataset_name(args: argparse.Namespace, meta: dict | None = None) -> str:
    if getattr(args, "dataset", None):
        return args.dataset
    if meta and meta.get("dataset", {}).get("name"):
        return meta["dataset"]["name"]
    return "digits"


def load_split(args: argparse.Namespace, split: str, meta: dict | None = None):
    from ..data import load_dataset

    name = dataset_name(args, meta)
    ds = load_dataset(name, split, getattr(args, "data_dir", None))
    if meta and meta.get("dataset", {}).get("num_classes") not in (None, ds.info.num_classes):
        raise ValueError(f"the model has {meta['dataset']['num_classes']} classes but dataset {name!r} has "
                         f"{ds.info.num_classes}; pass the dataset the model was trained on.")
    return ds


def load_model(args: argparse.Namespace, path: str | Path):
    """(model, meta) on the chosen device, in eval mode."""
    from ..io import load_model as _load

    return _load(path, device=device(args))


def ground_truth(model_path: str | Path, explicit: str | None = None):
    """(goal, poison_indices, info) from ``--truth`` or the model's ``NAME.truth.safetensors``."""
    from ..io import load_ground_truth, truth_path

    p = Path(explicit) if explicit else truth_path(model_path)
    if explicit or p.exists():
        return load_ground_truth(p)
    return None


@contextmanager
def progress(args: argparse.Namespace, description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields a ``progress(done, total)`` callback."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    disable = not sys.stderr.isatty()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=True, disable=disable,
                  console=_console(stderr=True)) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def emit(args: argparse.Namespace, data: dict[str, Any], title: str | None = None,
         rows: Sequence[Sequence[Any]] | None = None, columns: Sequence[str] | None = None,
         notes: Sequence[str] = ()) -> None:
    """Print ``data`` as JSON with --json, otherwise a rich table (``columns`` x ``rows``) and notes."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(data, indent=2, default=_jsonable) + "\n")
        return
    con = _console()
    if rows is not None and columns is not None:
        from rich.table import Table

        table = Table(title=title)
        for c in columns:
            table.add_column(str(c))
        for r in rows:
            table.add_row(*[fmt(v) for v in r])
        con.print(table)
    elif title:
        con.print(f"[bold]{title}[/bold]")
    for n in notes:
        con.print(n)


def _jsonable(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_json"):
        return o.to_json()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"
