"""Core commands: ``train``, ``attack badnets``, ``evaluate``, ``sensitivity``, ``download``."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import _common as c


def register(sub, groups) -> None:
    p = sub.add_parser("train", help="train a clean model on a dataset and write it")
    c.add_common(p)
    c.add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = groups["attack"].add_parser(
        "badnets", help="BadNets data poisoning (Gu et al. 2017): poison, train, write model + ground truth")
    c.add_common(p)
    c.add_train_args(p)
    add_trigger_args(p)
    p.add_argument("--target", type=int, default=0, help="all-to-one target label (default 0)")
    p.add_argument("--all-to-all", action="store_true", help="relabel y -> (y + 1) mod K instead")
    p.add_argument("--rate", type=float, default=0.1, help="poisoned fraction of the training set (default 0.1)")
    p.set_defaults(func=cmd_badnets)

    p = sub.add_parser("evaluate", help="clean accuracy, and ASR / robust accuracy when the ground truth is known")
    p.add_argument("model", help="model file (.safetensors with its .json sidecar)")
    p.add_argument("--truth", default=None, help="ground-truth file (default: MODEL.truth.safetensors if present)")
    c.add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sensitivity", help="exercise 1: ASR when the trigger is resized or shifted")
    p.add_argument("model", help="a backdoored model with its ground-truth file")
    p.add_argument("--truth", default=None)
    p.add_argument("--max-shift", type=int, default=None, help="largest shift in pixels (default: H // 2)")
    c.add_common(p)
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("download", help="download a dataset's official files (needs internet)")
    p.add_argument("dataset", choices=["mnist", "cifar10", "gtsrb"])
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_download)


def add_trigger_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trigger")
    g.add_argument("--trigger", default="pattern", choices=["pixel", "pattern", "square", "png"],
                   help="single bright pixel, BadNets 3x3 pattern, solid square, or a PNG (default pattern)")
    g.add_argument("--size", type=int, default=3, help="square / PNG side in pixels (default 3)")
    g.add_argument("--position", default="bottom-right",
                   help="bottom-right | bottom-left | top-right | top-left | center | ROW,COL")
    g.add_argument("--color", type=float, default=1.0, help="square colour in [0,1] (default 1.0)")
    g.add_argument("--png", default=None, help="trigger image for --trigger png (alpha = mask)")


def make_trigger(args: argparse.Namespace, shape):
    from ..triggers import PatchTrigger

    pos = args.position
    if pos and pos[0].isdigit():
        try:
            r, col = (int(v) for v in pos.split(","))
        except ValueError:
            raise ValueError(f"--position must be a corner name or ROW,COL; got {pos!r}.") from None
        pos = (r, col)
    if args.trigger == "pixel":
        return PatchTrigger.single_pixel(shape, pos)
    if args.trigger == "pattern":
        return PatchTrigger.badnets_pattern(shape, pos)
    if args.trigger == "square":
        return PatchTrigger.square(shape, args.size, pos, args.color)
    if not args.png:
        raise ValueError("--trigger png needs --png PATH.")
    return PatchTrigger.from_png(args.png, shape, pos, size=args.size)


def cmd_train(args: argparse.Namespace) -> int:
    from ..metrics import evaluate

    name = c.dataset_name(args)
    train, test = c.load_split(args, "train"), c.load_split(args, "test")
    model, log, cfg = train_model_cli(args, train, f"train {name}")
    out = Path(args.output or f"{name}-clean.safetensors")
    from ..io import save_model

    save_model(out, model, dataset=train.info.to_json(), training=cfg)
    ev = evaluate(model, test)
    c.emit(args, {"output": str(out), "clean_accuracy": ev.clean_accuracy, "training": cfg},
           title=f"trained {model.arch} on {name}", rows=[["clean accuracy", c.pct(ev.clean_accuracy)],
                                                          ["images/s", f"{log.images_per_second:.0f}"]],
           columns=["metric", "value"], notes=[f"wrote {out}"])
    return 0


def train_model_cli(args, dataset, description):
    return c.train_model(args, dataset, dataset.info, description)


def cmd_badnets(args: argparse.Namespace) -> int:
    from ..attacks import BadNets
    from ..metrics import evaluate

    name = c.dataset_name(args)
    train, test = c.load_split(args, "train"), c.load_split(args, "test")
    trig = make_trigger(args, train.info.input_shape)
    attack = BadNets(trigger=trig, target=args.target, all_to_all=args.all_to_all, rate=args.rate)
    g = c.generator(args)
    poisoned = attack.poison(train, generator=g)
    model, log, cfg = c.train_model(args, poisoned.dataset, train.info, f"train BadNets on {name}", g)
    params = {"trigger": args.trigger, "size": args.size, "position": args.position, "target": args.target,
              "all_to_all": args.all_to_all, "rate": args.rate}
    kind = "all-to-all" if args.all_to_all else f"target {args.target}"
    out, tp = c.save_attacked(args, model, train.info, poisoned.goal, poisoned.poison_indices, cfg,
                              "badnets", params, f"{name}-badnets-{args.trigger}")
    ev = evaluate(model, test, poisoned.goal)
    data = {"output": str(out), "truth": str(tp), "poisoned": len(poisoned.poison_indices), **_eval_json(ev)}
    c.emit(args, data, title=f"BadNets ({args.trigger}, {kind}, {args.rate:.0%} poison) on {name}",
           rows=[["clean accuracy", c.pct(ev.clean_accuracy)],
                 ["attack success rate", c.pct(ev.attack_success_rate)],
                 ["robust accuracy", c.pct(ev.robust_accuracy)]],
           columns=["metric", "value"], notes=[f"wrote {out} and {tp}"])
    return 0


def _eval_json(ev) -> dict:
    d = {"clean_accuracy": ev.clean_accuracy, "clean_accuracy_ci": list(ev.clean_accuracy_ci)}
    if ev.attack_success_rate is not None:
        d.update(attack_success_rate=ev.attack_success_rate,
                 attack_success_rate_ci=list(ev.attack_success_rate_ci), n_stamped=ev.n_stamped)
    if ev.robust_accuracy is not None:
        d.update(robust_accuracy=ev.robust_accuracy, robust_accuracy_ci=list(ev.robust_accuracy_ci))
    return d


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..metrics import evaluate

    model, meta = c.load_model(args, args.model)
    test = c.load_split(args, "test", meta)
    truth = c.ground_truth(args.model, args.truth)
    ev = evaluate(model, test, truth[0] if truth else None)
    data = {"model": str(args.model), "dataset": test.info.name, "n_test": ev.n_clean, **_eval_json(ev),
            "per_class_accuracy": list(ev.per_class_accuracy)}
    rows = [["clean accuracy", c.pct(ev.clean_accuracy),
             f"[{c.pct(ev.clean_accuracy_ci[0])}, {c.pct(ev.clean_accuracy_ci[1])}]"]]
    if ev.attack_success_rate is not None:
        rows.append(["attack success rate", c.pct(ev.attack_success_rate),
                     f"[{c.pct(ev.attack_success_rate_ci[0])}, {c.pct(ev.attack_success_rate_ci[1])}]"])
    if ev.robust_accuracy is not None:
        rows.append(["robust accuracy", c.pct(ev.robust_accuracy),
                     f"[{c.pct(ev.robust_accuracy_ci[0])}, {c.pct(ev.robust_accuracy_ci[1])}]"])
    c.emit(args, data, title=f"{args.model} on {test.info.name} test ({ev.n_clean} images)", rows=rows,
           columns=["metric", "value", "95% CI (Wilson)"],
           notes=[] if truth else ["no ground-truth file: only clean accuracy is measured"])
    return 0


def sensitivity_variants(trigger, max_shift: int):
    """Exercise 1 of seed 000: the trigger resized (patch side) and shifted (pixels up/left)."""
    r0, c0, r1, c1 = trigger.bbox()
    side = r1 - r0
    sizes = sorted({s for s in (1, side - 2, side - 1, side, side + 1, side + 2, 2 * side) if s >= 1})
    out = [("size", f"{s}x{s}" + (" (original)" if s == side else ""), trigger.scaled(s / side)) for s in sizes]
    shifts = [0, 1, 2, 3, 4, 6, 8, 12, 16]
    for d in [s for s in shifts if s <= max_shift]:
        out.append(("shift", f"up-left by {d}" + (" (original)" if d == 0 else ""), trigger.shifted(-d, -d)))
    for d in [s for s in (1, 2, 4) if s <= max_shift]:
        out.append(("shift", f"up by {d}", trigger.shifted(-d, 0)))
        out.append(("shift", f"left by {d}", trigger.shifted(0, -d)))
    return out


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from ..metrics import attack_success_rate
    from ..triggers import PatchTrigger
    from ..types import TriggerGoal

    model, meta = c.load_model(args, args.model)
    test = c.load_split(args, "test", meta)
    truth = c.ground_truth(args.model, args.truth)
    if truth is None or not isinstance(truth[0], TriggerGoal) or not isinstance(truth[0].trigger, PatchTrigger):
        raise ValueError(f"sensitivity needs a patch-trigger model with a ground-truth file; none found for "
                         f"{args.model} (pass --truth).")
    goal = truth[0]
    H = test.info.input_shape[1]
    variants = sensitivity_variants(goal.trigger, args.max_shift if args.max_shift is not None else H // 2)
    rows = []
    for kind, desc, trig in variants:
        g2 = TriggerGoal(trigger=trig, target=goal.target, mapping=goal.mapping)
        rows.append([kind, desc, attack_success_rate(model, g2, test)])
    c.emit(args, {"model": str(args.model), "variants": [{"kind": k, "variant": d, "attack_success_rate": a}
                                                         for k, d, a in rows]},
           title=f"Trigger sensitivity of {args.model} (exercise 1)",
           rows=[[k, d, c.pct(a)] for k, d, a in rows], columns=["perturbation", "variant", "ASR"])
    return 0


def cmd_download(args: argparse.Namespace) -> int:  # pragma: no cover - needs network
    from ..data import download

    path = download(args.dataset, args.data_dir)
    c.emit(args, {"dataset": args.dataset, "path": str(path)}, title=f"downloaded {args.dataset} into {path}")
    return 0
