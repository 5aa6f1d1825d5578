"""``backdoorlab demo``: the whole job end to end on the embedded digits data, in about a minute.

Train a clean model and a BadNets model (3x3 patch -> label 0, 10% poison), measure CA / ASR,
then audit the backdoored model and its clean twin with Neural Cleanse, repair it by unlearning,
screen inputs with a calibrated STRIP guard, find the poison in the training set with activation
clustering, and certify a kNN classifier against poisoning; print one table.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import _common as c


def register(sub, groups) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on the embedded digits data (about a minute)")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's model files (default runs/demo)")
    c.add_common(p, data=False)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..attacks import BadNets
    from ..data import load_dataset
    from ..io import save_ground_truth, save_model, truth_path
    from ..metrics import evaluate
    from ..triggers import PatchTrigger

    t_start = time.perf_counter()
    out = Path(args.out)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    info = train.info
    args.dataset, args.epochs, args.batch_size, args.lr, args.arch, args.optimizer = (
        "digits", None, None, None, None, "sgd")
    rows: list[list[str]] = []
    data: dict = {"steps": []}

    def record(step: str, model_name: str, result: str, seconds: float, **extra) -> None:
        rows.append([step, model_name, result, f"{seconds:.1f}"])
        data["steps"].append({"step": step, "model": model_name, "result": result,
                              "seconds": round(seconds, 2), **extra})

    t = time.perf_counter()
    clean, _, cfg_clean = c.train_model(args, train, info, "train clean model", c.generator(args))
    save_model(out / "clean.safetensors", clean, dataset=info.to_json(), training=cfg_clean)
    ev_c = evaluate(clean, test)
    record("train", "clean", f"CA {c.pct(ev_c.clean_accuracy)}", time.perf_counter() - t,
           clean_accuracy=ev_c.clean_accuracy)

    t = time.perf_counter()
    g = c.generator(args)
    trig = PatchTrigger.square(info.input_shape, 3, "bottom-right")
    poisoned = BadNets(trigger=trig, target=0, rate=0.1).poison(train, generator=g)
    bd, _, cfg_bd = c.train_model(args, poisoned.dataset, info, "train BadNets model", g)
    save_model(out / "badnets.safetensors", bd, dataset=info.to_json(), training=cfg_bd)
    save_ground_truth(truth_path(out / "badnets.safetensors"), poisoned.goal, poisoned.poison_indices)
    ev_b = evaluate(bd, test, poisoned.goal)
    ev_cg = evaluate(clean, test, poisoned.goal)
    record("attack badnets", "backdoored", f"CA {c.pct(ev_b.clean_accuracy)}, ASR {c.pct(ev_b.attack_success_rate)}",
           time.perf_counter() - t, clean_accuracy=ev_b.clean_accuracy,
           attack_success_rate=ev_b.attack_success_rate)
    rows.append(["(trigger on clean twin)", "clean", f"ASR {c.pct(ev_cg.attack_success_rate)}", "-"])

    for stage in STAGES():
        kw = {"poisoned": poisoned} if stage is stage_sanitize else {}
        stage(args, record, clean=clean, backdoored=bd, goal=poisoned.goal, train=train, test=test, out=out, **kw)

    total = time.perf_counter() - t_start
    data["total_seconds"] = round(total, 2)
    c.emit(args, data, title=f"backdoorlab demo on digits ({total:.0f} s)", rows=rows,
           columns=["step", "model", "result", "seconds"], notes=[f"model files in {out}/"])
    return 0


def stage_strip(args, record, *, clean, backdoored, goal, train, test, out) -> None:
    """STRIP (Gao et al. 2019) as a calibrated Guard at FPR 5%: clean inputs passed, stamped caught."""
    import torch

    from ..defenses.filter import FILTERS, Guard

    t = time.perf_counter()
    pool = train.x[torch.randperm(len(train), generator=c.generator(args))[:400]]
    guard = Guard.calibrate(FILTERS["strip"](n_overlays=32), backdoored, pool, fpr=0.05)
    frr = float(guard(test.x).flagged.float().mean())
    stamped = goal.apply(test.x[goal.relevant(test.y)])
    caught = float(guard(stamped).flagged.float().mean())
    record("filter strip (FPR 5%)", "backdoored", f"clean withheld {c.pct(frr)}, stamped caught {c.pct(caught)}",
           time.perf_counter() - t, frr=frr, detection_rate=caught)


def stage_sanitize(args, record, *, clean, backdoored, goal, train, test, out, poisoned=None) -> None:
    """Activation clustering (Chen et al. 2018) on the poisoned training set: which samples are poison?"""
    from ..defenses.sanitize import SANITIZERS

    if poisoned is None:
        return
    t = time.perf_counter()
    res = SANITIZERS["activation-clustering"]().scan(backdoored, poisoned.dataset)
    flagged = res.flagged.bool()
    truth = poisoned.dataset.poison_mask
    recall = float((flagged & truth).sum()) / max(1, int(truth.sum()))
    precision = float((flagged & truth).sum()) / max(1, int(flagged.sum()))
    record("inspect-data activation-clustering", "training set", f"poison recall {c.pct(recall)}, precision {c.pct(precision)}",
           time.perf_counter() - t, recall=recall, precision=precision)


def stage_knn(args, record, *, clean, backdoored, goal, train, test, out) -> None:
    """Certified kNN (Jia et al. 2022): test accuracy certified against e poisoned training samples."""
    from ..certify import CERTIFIERS

    t = time.perf_counter()
    cert = CERTIFIERS["knn"](k=41).certify(train.x, train.y, test.x, num_classes=10)
    curve = cert.curve(test.y, [0, 5, 10])
    record("certify knn (k=41)", "digits data", ", ".join(f"e={e}: {c.pct(a)}" for e, a in curve),
           time.perf_counter() - t, certified_accuracy={str(e): a for e, a in curve})


def _stages():
    from .scan import demo_stage as stage_nc

    return [stage_nc, stage_strip, stage_sanitize, stage_knn]


# Stages after training: functions ``stage(args, record, *, clean, backdoored, goal, train, test, out)``.
STAGES = _stages
