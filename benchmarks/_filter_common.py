"""Shared setup of benchmarks/strip.py and benchmarks/purify.py: the cached BadNets models (trained
once into runs/filter/ or runs/strip-v2/, ignored folders) and the defender's / evaluator's image sets."""
from __future__ import annotations

import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RUNS = ROOT / "runs" / "filter"
RUNS_V2 = ROOT / "runs" / "strip-v2"
RESULTS = ROOT / "benchmarks" / "results"

# dataset -> (architecture, trigger, side, epochs, lr): BadNets bottom-right, target 0, 10% poison.
# "square" = solid white square; "checker" = black/white checkerboard (visible on bright signs too).
SETTINGS = {"mnist": ("badnets-cnn", "square", 3, 6, 0.05), "gtsrb": ("badnets-cnn", "square", 4, 8, 0.02),
            "cifar10": ("badnets-cnn", "checker", 4, 30, 0.05), "digits": ("digits-cnn", "square", 3, 30, 0.05)}

# Second-round STRIP victims on the GTSRB and CIFAR-10 subsets: name -> (dataset, architecture, trigger, size or
# alpha, epochs, lr); 10% poison, target 0, cached in runs/strip-v2/.  "square" 8 = an 8x8 white square
# at the bottom right (STRIP's CIFAR-10 patch is about that size); "checker" 8 = an 8x8 black/white
# checkerboard there (visible on bright signs too, where a white square is not); "noise" 0.2 = Chen et al.'s blended
# random-noise key, x' = 0.8 x + 0.2 k, k uniform in [0, 1]^(C,H,W) drawn with seed 1, the nearest we
# have to the image-wide "Hello Kitty" trigger STRIP's authors add to CIFAR-10 inputs.
VICTIMS_V2 = {"gtsrb-square8": ("gtsrb", "badnets-cnn", "square", 8, 10, 0.02),
              "gtsrb-checker8": ("gtsrb", "badnets-cnn", "checker", 8, 10, 0.02),
              "gtsrb-blend": ("gtsrb", "badnets-cnn", "noise", 0.2, 10, 0.02),
              "cifar10-checker8": ("cifar10", "badnets-cnn", "checker", 8, 15, 0.02),
              "cifar10-checker8-30ep": ("cifar10", "badnets-cnn", "checker", 8, 30, 0.02),
              "cifar10-checker8-8ep": ("cifar10", "badnets-cnn", "checker", 8, 8, 0.02)}


def dataset_of(name: str) -> str:
    return VICTIMS_V2[name][0] if name in VICTIMS_V2 else name


def model_path(name: str) -> Path:
    if name in VICTIMS_V2:
        return RUNS_V2 / f"{name}.safetensors"
    return RUNS / f"{name}-badnets-{SETTINGS[name][1]}.safetensors"


def describe(name: str, goal) -> str:
    """'BadNets 4x4 white square' / 'blended random noise (alpha 0.2)'."""
    kind_of = VICTIMS_V2[name][2] if name in VICTIMS_V2 else SETTINGS[name][1]
    if kind_of == "noise":
        return f"BadNets poisoning with a blended random-noise key (alpha {VICTIMS_V2[name][3]:g})"
    side = goal.trigger.bbox()[2] - goal.trigger.bbox()[0]
    kind = {"square": "white square", "checker": "black/white checkerboard"}[kind_of]
    return f"BadNets {side}x{side} {kind}"


def make_trigger(kind: str, side: int, shape):
    from backdoorlab.triggers import PatchTrigger

    if kind == "square":
        return PatchTrigger.square(shape, side, "bottom-right")
    if kind == "noise":
        from backdoorlab.triggers import BlendTrigger

        return BlendTrigger.random_noise(shape, alpha=side, generator=torch.Generator().manual_seed(1))
    board = ((torch.arange(side).view(-1, 1) + torch.arange(side).view(1, -1)) % 2 == 0).float()
    return PatchTrigger.from_patch(board, shape, "bottom-right")


def badnets_model(name: str):
    """(model, goal, train, test): the cached BadNets model for ``name``, trained once if missing."""
    from backdoorlab.attacks import BadNets
    from backdoorlab.data import load_dataset
    from backdoorlab.io import load_ground_truth, load_model, save_ground_truth, save_model, truth_path
    from backdoorlab.models import build
    from backdoorlab.training import fit, init_weights
    data = dataset_of(name)
    train = load_dataset(data, "train", None if data == "digits" else DATA)
    test = load_dataset(data, "test", None if data == "digits" else DATA)
    path = model_path(name)
    if not path.exists():
        arch, kind, side, epochs, lr = VICTIMS_V2[name][1:] if name in VICTIMS_V2 else SETTINGS[name]
        g = torch.Generator().manual_seed(0)
        trig = make_trigger(kind, side, train.info.input_shape)
        poisoned = BadNets(trigger=trig, target=0, rate=0.1).poison(train, generator=g)
        info = train.info
        model = init_weights(build(arch, input_shape=info.input_shape, num_classes=info.num_classes,
                                   mean=info.mean, std=info.std), g)
        log = fit(model, poisoned.dataset, epochs=epochs, batch_size=128, lr=lr, generator=g)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(path, model, dataset=info.to_json(),
                   training={"epochs": epochs, "batch_size": 128, "lr": lr, **log.to_json()})
        save_ground_truth(truth_path(path), poisoned.goal, poisoned.poison_indices,
                          info={"attack": "badnets", "params": {"trigger": kind, "size": side, "target": 0}})
    model, _ = load_model(path)
    goal = load_ground_truth(truth_path(path))[0]
    return model, goal, train, test


def split_sets(train, test, goal, n_pool: int, n_cal: int, n_test: int, seed: int = 0):
    """Defender: ``n_pool`` + ``n_cal`` clean training images.  Evaluation: ``n_test`` clean test
    images and ``n_test`` stamped test images of classes other than the target (with labels)."""
    from backdoorlab.data import as_tensors

    g = torch.Generator().manual_seed(seed)
    xtr, _ = as_tensors(train)
    xte, yte = as_tensors(test)
    perm = torch.randperm(len(xtr), generator=g)
    pool, cal = xtr[perm[:n_pool]], xtr[perm[n_pool:n_pool + n_cal]]
    tp = torch.randperm(len(xte), generator=g)
    clean_idx = tp[:n_test]
    rel = tp[goal.relevant(yte[tp])][:n_test]
    return pool, cal, (xte[clean_idx], yte[clean_idx]), (goal.apply(xte[rel]), yte[rel])


def header(title: str, command: str) -> list[str]:
    from _util import load_avg, machine

    return [f"_Command:_ `{command}`  ", f"_Run:_ {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
            f"_Machine:_ {machine()}; load average at the end {load_avg()} (other developers' jobs shared "
            "the 2 cores)", "", f"## {title}", ""]


def md_table(columns, rows) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return out + [""]


def pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"
