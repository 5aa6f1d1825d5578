"""``attack trojannn`` / ``attack poison-frogs`` / ``attack blend``: run the attack, write the
backdoored model and its ground-truth file (like ``attack badnets``)."""
from __future__ import annotations

import argparse
import dataclasses

from . import _common as c


def register(sub, groups) -> None:
    from ..attacks import Blend, PoisonFrogs, TrojanNN

    p = groups["attack"].add_parser(
        "blend", help="blended-injection poisoning (Chen et al. 2017; noise / image key) or an invisible "
                      "additive / warping trigger: poison, train, write model + ground truth")
    c.add_common(p)
    c.add_train_args(p)
    p.add_argument("--image", default=None, help="key image (PNG) for --pattern image")
    c.add_params(p, Blend)
    p.set_defaults(func=cmd_blend)

    p = groups["attack"].add_parser(
        "trojannn", help="Trojaning attack (Liu et al. 2018) on a trained MODEL without its training data: "
                         "select neurons, generate the trigger, reverse-engineer data, retrain")
    p.add_argument("model", help="the model to trojan (.safetensors with its .json sidecar)")
    p.add_argument("-o", "--output", default=None, help="model file to write (default MODEL.trojannn.safetensors)")
    p.add_argument("--logo", default=None, help="PNG whose alpha (or brightness) is the mask, for --mask-shape logo")
    p.add_argument("--layer", dest="param_layer", default=None,
                   help="dotted name of the layer whose neurons are selected (default: the last hidden Linear)")
    c.add_common(p)
    c.add_params(p, TrojanNN)
    p.set_defaults(func=cmd_trojannn)

    p = groups["attack"].add_parser(
        "poison-frogs", help="Poison Frogs clean-label feature collision (Shafahi et al. 2018) against a victim "
                             "that transfer-learns from MODEL: craft poisons, retrain the victim, write it")
    p.add_argument("model", help="the pre-trained feature extractor the victim starts from")
    p.add_argument("-o", "--output", default=None, help="victim model to write (default MODEL.poison-frogs.safetensors)")
    p.add_argument("--target-index", type=int, default=None,
                   help="index of the target instance t in the test split (default: the first correctly "
                        "classified test image not of --target-label)")
    p.add_argument("--victim", default="last-layer", choices=["last-layer", "end-to-end"],
                   help="victim retraining: only the final layer (one-shot kill) or the whole network")
    p.add_argument("--epochs", type=int, default=10, help="victim retraining epochs (default 10)")
    p.add_argument("--lr", type=float, default=None, help="victim learning rate (default 0.01 last-layer, "
                                                          "1e-4 Adam end-to-end)")
    p.add_argument("--target-label", dest="param_target_label", type=int, default=0,
                   help="the base class: the label the target instance should receive (default 0)")
    c.add_common(p)
    p.add_argument("--craft-lr", dest="param_lr", type=float, default=None,
                   help="λ, the step size of the poison crafting (default 0.01)")
    c.add_params(p, PoisonFrogs, skip=("lr",))
    p.set_defaults(func=cmd_poison_frogs)


def _rows(before, after):
    return [["clean accuracy", c.pct(before.clean_accuracy), c.pct(after.clean_accuracy)],
            ["attack success rate", c.pct(before.attack_success_rate), c.pct(after.attack_success_rate)]]


def _json(ev) -> dict:
    from .core import _eval_json

    return _eval_json(ev)


def _simple(params: dict) -> dict:
    return {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))}


def cmd_blend(args: argparse.Namespace) -> int:
    from ..attacks import Blend
    from ..metrics import evaluate

    name = c.dataset_name(args)
    train, test = c.load_split(args, "train"), c.load_split(args, "test")
    params = c.params_from_args(args)
    if args.image:
        from ..io import read_png

        params.setdefault("pattern", "image")
        params["image"] = read_png(args.image)[:3]
    attack = Blend(**params)
    g = c.generator(args)
    poisoned = attack.poison(train, generator=g)
    model, _, cfg = c.train_model(args, poisoned.dataset, train.info, f"train Blend on {name}", g)
    saved = _simple({**dataclasses.asdict(attack), "image": args.image})
    out, tp = c.save_attacked(args, model, train.info, poisoned.goal, poisoned.poison_indices, cfg,
                              "blend", saved, f"{name}-blend-{attack.pattern}")
    ev = evaluate(model, test, poisoned.goal)
    data = {"output": str(out), "truth": str(tp), "poisoned": len(poisoned.poison_indices), **_json(ev)}
    c.emit(args, data, title=f"Blend ({attack.pattern}, target {attack.target}, {attack.rate:.0%} poison) on {name}",
           rows=[["clean accuracy", c.pct(ev.clean_accuracy)], ["attack success rate", c.pct(ev.attack_success_rate)],
                 ["robust accuracy", c.pct(ev.robust_accuracy)]],
           columns=["metric", "value"], notes=[f"wrote {out} and {tp}"])
    return 0


def _out_path(args, suffix: str):
    from pathlib import Path

    if args.output:
        return Path(args.output)
    m = Path(args.model)
    return m.with_name(m.name.removesuffix(".safetensors") + f".{suffix}.safetensors")


def cmd_trojannn(args: argparse.Namespace) -> int:
    from ..attacks import TrojanNN
    from ..metrics import evaluate

    model, meta = c.load_model(args, args.model)
    test = c.load_split(args, "test", meta)
    params = c.params_from_args(args)
    if args.logo:
        from ..io import read_png

        img = read_png(args.logo)
        params["logo"] = img[-1] if img.shape[0] in (2, 4) else img.mean(0)
        params.setdefault("mask_shape", "logo")
    attack = TrojanNN(**params)
    implanted = attack.implant(model, None, generator=c.generator(args))
    args.output = str(_out_path(args, "trojannn"))
    s = implanted.summary
    cfg = {**(meta.get("training") or {}), "trojannn_from": str(args.model)}
    out, tp = c.save_attacked(args, implanted.model, test.info, implanted.goal, None, cfg, "trojannn",
                              _simple({**dataclasses.asdict(attack), "logo": args.logo,
                                       "neurons": str(s["neurons"])}), "trojannn")
    before, after = evaluate(model, test, implanted.goal), evaluate(implanted.model, test, implanted.goal)
    data = {"output": str(out), "truth": str(tp), "before": _json(before), "after": _json(after),
            "summary": s}
    c.emit(args, data, title=f"Trojaning attack -> label {attack.target} on {test.info.name} "
                             f"(neurons {s['neurons']}, no training data used)",
           rows=_rows(before, after) + [
               ["stage times (s)", "-", f"trigger {s['trigger_seconds']:.1f} / reverse {s['reverse_seconds']:.1f} "
                                        f"/ retrain {s['retrain_seconds']:.1f}"]],
           columns=["metric", "original", "trojaned"], notes=[f"wrote {out} and {tp}"])
    return 0


def cmd_poison_frogs(args: argparse.Namespace) -> int:
    import torch

    from .._torch import clone_model, predict
    from ..attacks import PoisonFrogs
    from ..metrics import evaluate
    from ..training import fit

    model, meta = c.load_model(args, args.model)
    train, test = c.load_split(args, "train", meta), c.load_split(args, "test", meta)
    params = c.params_from_args(args)
    label = int(params.pop("target_label"))
    pred = predict(model, test.x)
    if args.target_index is None:
        ok = torch.nonzero((pred == test.y) & (test.y != label)).flatten()
        if not len(ok):
            raise ValueError(f"no correctly classified test image outside class {label}; pass --target-index.")
        idx = int(ok[0])
    else:
        idx = args.target_index
        if not 0 <= idx < len(test):
            raise ValueError(f"--target-index must be in [0, {len(test)}); got {idx}.")
    attack = PoisonFrogs(target_x=test.x[idx], target_label=label, **params)
    g = c.generator(args)
    poisoned = attack.poison(train, model=model, generator=g)

    def victim(dataset):
        v = clone_model(model)
        if args.victim == "last-layer":
            for n, p_ in v.named_parameters():
                p_.requires_grad_(n.startswith("head."))
            fit(v, dataset, epochs=args.epochs, lr=args.lr or 0.01, generator=c.generator(args))
            for p_ in v.parameters():
                p_.requires_grad_(True)
        else:
            fit(v, dataset, epochs=args.epochs, lr=args.lr or 1e-4, optimizer="adam", weight_decay=0.0,
                generator=c.generator(args))
        return v.eval()

    with c.progress(args, "retrain the clean victim"):
        clean_victim = victim(train)
    with c.progress(args, "retrain the poisoned victim"):
        poisoned_victim = victim(poisoned.dataset)
    args.output = str(_out_path(args, "poison-frogs"))
    out, tp = c.save_attacked(args, poisoned_victim, train.info, poisoned.goal, poisoned.poison_indices,
                              {**(meta.get("training") or {}), "victim": args.victim, "victim_epochs": args.epochs},
                              "poison-frogs", _simple({**dataclasses.asdict(attack), "target_index": idx}),
                              "poison-frogs")
    before, after = evaluate(clean_victim, test, poisoned.goal), evaluate(poisoned_victim, test, poisoned.goal)
    data = {"output": str(out), "truth": str(tp), "target_index": idx, "target_true_label": int(test.y[idx]),
            "poison_indices": poisoned.poison_indices.tolist(), "clean_victim": _json(before),
            "poisoned_victim": _json(after), "success": bool(after.attack_success_rate == 1.0)}
    c.emit(args, data, title=f"Poison Frogs: test image {idx} (class {int(test.y[idx])}) -> {label}, "
                             f"{len(poisoned.poison_indices)} poison(s), {args.victim} victim",
           rows=_rows(before, after), columns=["metric", "clean victim", "poisoned victim"],
           notes=[f"wrote {out} and {tp}"])
    return 0
