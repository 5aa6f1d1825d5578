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
    p.add_argument("--save-run", default=None, metavar="DIR",
                   help="also save this run (result JSON, command, versions, seed, images) into DIR "
                        "for `backdoorlab report DIR`")
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


# ---- algorithm dataclasses <-> CLI flags ---------------------------------------------------------
def add_params(p: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One ``--field-name`` flag per simple (int / float / bool / str) dataclass field of ``cls``;
    the constructor signature is the config schema (DESIGN section 4)."""
    import dataclasses

    g = p.add_argument_group(f"{cls.__name__} parameters")
    for f in dataclasses.fields(cls):
        if f.name in skip or f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            g.add_argument(flag, dest=f"param_{f.name}", type=_parse_bool, default=None, metavar="BOOL",
                           help=f"(default {default})")
        elif isinstance(default, (int, float, str)) and default is not None:
            g.add_argument(flag, dest=f"param_{f.name}", type=type(default), default=None,
                           help=f"(default {default})")


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false; got {s!r}")


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k[6:]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}


# ---- repair: shared by every Mitigator's sub-command --------------------------------------------
def add_repair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.safetensors with its .json sidecar)")
    p.add_argument("-o", "--output", default=None, help="where to write the repaired model "
                   "(default: MODEL.<method>.safetensors beside the input)")
    p.add_argument("--truth", default=None, help="ground-truth file (default: MODEL.truth.safetensors if present)")
    p.add_argument("--clean-fraction", type=float, default=0.05,
                   help="fraction of the clean training split the defender holds (default 0.05)")
    p.add_argument("--clean-per-class", type=int, default=None,
                   help="instead of --clean-fraction: this many clean samples per class")
    add_common(p)


def run_repair(args: argparse.Namespace, mitigator: Any, method: str) -> int:
    """Before/after CA, ASR and RA for ``mitigator.repair``; writes the new model file.

    ASR uses the true trigger when a ground-truth file is known, else the reversed trigger that the
    method reports in ``Repaired.summary['trigger']`` / ``['target']`` (Neural Cleanse methods)."""
    import dataclasses
    import time

    from ..data import clean_subset
    from ..io import save_model
    from ..metrics import evaluate
    from ..types import TriggerGoal

    model, meta = load_model(args, args.model)
    train, test = load_split(args, "train", meta), load_split(args, "test", meta)
    g = generator(args)
    if args.clean_per_class:
        clean = clean_subset(train, per_class=args.clean_per_class, generator=g)
    else:
        clean = clean_subset(train, fraction=args.clean_fraction, generator=g)
    truth = ground_truth(args.model, args.truth)
    goal = truth[0] if truth else None
    t0 = time.perf_counter()
    with progress(args, f"repair ({method})") as cb:
        repaired = mitigator.repair(model, clean, generator=g, progress=cb)
    seconds = time.perf_counter() - t0
    asr_source = "ground truth" if goal is not None else None
    from ..triggers import Trigger

    if goal is None and isinstance(repaired.summary.get("trigger"), Trigger) and "target" in repaired.summary:
        goal = TriggerGoal(trigger=repaired.summary["trigger"], target=int(repaired.summary["target"]))
        asr_source = "reversed trigger"
    before, after = evaluate(model, test, goal), evaluate(repaired.model, test, goal)
    out = Path(args.output) if args.output else Path(args.model).with_name(
        Path(args.model).stem + f".{method}.safetensors")
    save_model(out, repaired.model, dataset=meta.get("dataset"), training=meta.get("training"),
               extra={"repaired_from": str(args.model), "method": method,
                      "params": {k: v for k, v in dataclasses.asdict(mitigator).items()
                                 if isinstance(v, (int, float, str, bool, type(None)))}})
    summary = {k: v for k, v in repaired.summary.items() if isinstance(v, (int, float, str, bool, list))}
    data = {"method": method, "output": str(out), "seconds": round(seconds, 3), "clean_samples": len(clean),
            "asr_trigger": asr_source, "before": before.to_json(), "after": after.to_json(), "summary": summary}
    rows = [["clean accuracy", pct(before.clean_accuracy), pct(after.clean_accuracy)],
            ["attack success rate", pct(before.attack_success_rate), pct(after.attack_success_rate)],
            ["robust accuracy", pct(before.robust_accuracy), pct(after.robust_accuracy)]]
    emit(args, data, title=f"repair --method {method} ({seconds:.1f} s, {len(clean)} clean samples)",
         rows=rows, columns=["metric", "before", "after"],
         notes=[f"ASR measured with the {asr_source}." if asr_source else "No trigger known: ASR not measured.",
                f"wrote {out}"])
    return 0


# ---- training + saving: shared by `train` and every `attack` sub-command -------------------------
TRAIN_DEFAULTS = {  # dataset -> (epochs, batch size, lr) for SGD + momentum + cosine schedule
    "digits": (30, 64, 0.05),
    "mnist": (10, 128, 0.05),
    "cifar10": (30, 128, 0.05),
    "gtsrb": (15, 128, 0.02),
}


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default=None, help="model file to write (.safetensors)")
    p.add_argument("--arch", default=None, help="architecture (default: the dataset's standard one)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])


def new_model(args: argparse.Namespace, info, g: torch.Generator | None = None):
    from ..models import DEFAULT_ARCH, build
    from ..training import init_weights

    arch = getattr(args, "arch", None) or DEFAULT_ARCH[info.name]
    model = build(arch, input_shape=info.input_shape, num_classes=info.num_classes,
                  mean=info.mean, std=info.std)
    return init_weights(model, g).to(device(args))


def train_model(args: argparse.Namespace, dataset, info, description: str = "training",
                g: torch.Generator | None = None):
    """Build the architecture for ``info`` and train it on ``dataset``; return (model, log, config)."""
    from ..training import fit

    g = g or generator(args)
    e, b, lr = TRAIN_DEFAULTS[info.name]
    cfg = {"epochs": args.epochs or e, "batch_size": args.batch_size or b, "lr": args.lr or lr,
           "optimizer": getattr(args, "optimizer", "sgd"), "seed": args.seed}
    model = new_model(args, info, g)
    with progress(args, description) as cb:
        log = fit(model, dataset, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                  optimizer=cfg["optimizer"], generator=g, progress=cb)
    cfg.update(log.to_json())
    return model, log, cfg


def save_attacked(args: argparse.Namespace, model, info, goal, poison_indices, train_cfg: dict,
                  attack_name: str, attack_params: dict, default_name: str) -> tuple[Path, Path]:
    """Write the backdoored model and its separate ground-truth file; return both paths."""
    from ..io import save_ground_truth, save_model, truth_path

    out = Path(args.output or f"{default_name}.safetensors")
    save_model(out, model, dataset=info.to_json(), training=train_cfg,
               extra={"attack": attack_name})
    tp = save_ground_truth(truth_path(out), goal, poison_indices,
                           info={"attack": attack_name, "params": attack_params})
    return out, tp


# ---- --save-run: a run folder that `backdoorlab report` renders ----------------------------------
def run_with_saving(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run ``args.func`` with JSON output captured, then write ``DIR/run.json`` plus the images
    the result names (recovered triggers, plots) and the true trigger when a ground-truth file is
    known.  The run format: ``{"command", "argv", "versions", "seed", "created", "result",
    "images": {name: file}, "exit_code"}``."""
    import contextlib
    import datetime
    import io as _io
    import platform

    from .. import __version__
    from ..io import atomic_write_bytes, png_bytes, save_json

    out = Path(args.save_run)
    want_json = args.json
    args.json = True
    buf = _io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = int(args.func(args) or 0)
    text = buf.getvalue()
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        result = {"output": text}
    images: dict[str, str] = {}
    for f in result.get("files", []) if isinstance(result, dict) else []:
        src = Path(f)
        if src.suffix == ".png" and src.exists():
            atomic_write_bytes(out / src.name, src.read_bytes())
            images[src.stem] = src.name
    model_path = getattr(args, "model", None)
    if model_path:
        truth = ground_truth(model_path, getattr(args, "truth", None))
        trig = getattr(truth[0], "trigger", None) if truth else None
        if trig is not None:
            img = trig.image()
            scale = max(1, 96 // img.shape[-1])
            atomic_write_bytes(out / "true_trigger.png",
                               png_bytes(img.repeat_interleave(scale, -1).repeat_interleave(scale, -2)))
            images["true_trigger"] = "true_trigger.png"
            result.setdefault("true_target", getattr(truth[0], "target", None))
    run = {"command": "backdoorlab " + " ".join(argv), "argv": list(argv), "subcommand": args.command,
           "method": getattr(args, "method", None), "seed": getattr(args, "seed", None),
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "versions": {"backdoorlab": __version__, "torch": torch.__version__,
                        "python": platform.python_version()},
           "exit_code": code, "result": result, "images": images}
    save_json(out / "run.json", run)
    if want_json:
        sys.stdout.write(text)
    else:
        _console().print(f"saved run to {out}/ — render it with `backdoorlab report {out}`")
    return code
