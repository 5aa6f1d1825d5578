"""A population of MNIST models with known ground truth, for detection benchmarks (issues 3 and 7).

``population(...)`` trains (or loads from ``runs/population/``, written with ``io.save_model`` /
``io.save_ground_truth``) BadNets-infected models with different targets, trigger kinds
(single pixel, BadNets pattern, square patch, blend) and positions, plus clean models that differ
only by seed.  Each model trains on a stratified subset of MNIST for a few epochs (CPU budget);
that is enough for about 98% clean accuracy and > 97% attack success.

    from population import population
    members = population()                 # list[Member]
    for m in members: m.name, m.model, m.infected, m.goal, m.target

Run as a script to build the cache and print the members' CA / ASR:
    python benchmarks/population.py [--train-size 12000] [--epochs 2]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import ROOT, SHARED_DATA, md_table  # noqa: E402

CACHE = ROOT / "runs" / "population"
SHAPE = (1, 28, 28)

# name: (trigger kind, position or alpha, target).  Targets cover all ten labels.
INFECTED = {
    "pixel-br-t0": ("pixel", "bottom-right", 0),
    "pixel-tl-t1": ("pixel", "top-left", 1),
    "pattern-br-t2": ("pattern", "bottom-right", 2),
    "pattern-tr-t3": ("pattern", "top-right", 3),
    "pattern-bl-t4": ("pattern", "bottom-left", 4),
    "patch3-br-t5": ("patch3", "bottom-right", 5),
    "patch4-tl-t6": ("patch4", "top-left", 6),
    "patch3-center-t7": ("patch3", "center", 7),
    "blend10-t8": ("blend", 0.1, 8),
    "blend20-t9": ("blend", 0.2, 9),
    "patch5-bl-t3": ("patch5", "bottom-left", 3),
    "pattern-tl-t0": ("pattern", "top-left", 0),
}
N_CLEAN = 10


@dataclass
class Member:
    name: str
    model: torch.nn.Module
    infected: bool
    goal: object | None          # TriggerGoal for infected members
    target: int | None
    kind: str                    # pixel / pattern / patch3 / ... / blend / clean


def make_trigger(kind: str, where, seed: int):
    from backdoorlab.triggers import BlendTrigger, PatchTrigger

    if kind == "pixel":
        return PatchTrigger.single_pixel(SHAPE, where)
    if kind == "pattern":
        return PatchTrigger.badnets_pattern(SHAPE, where)
    if kind.startswith("patch"):
        return PatchTrigger.square(SHAPE, int(kind[5:]), where)
    if kind == "blend":
        return BlendTrigger.random_noise(SHAPE, alpha=float(where), generator=torch.Generator().manual_seed(seed))
    raise ValueError(kind)


def _train(dataset, info, seed: int, epochs: int):
    from backdoorlab.models import build
    from backdoorlab.training import fit, init_weights

    g = torch.Generator().manual_seed(seed)
    m = init_weights(build("badnets-cnn", input_shape=info.input_shape, num_classes=info.num_classes,
                           mean=info.mean, std=info.std), g)
    fit(m, dataset, epochs=epochs, batch_size=64, lr=0.05, generator=g)
    return m.eval()


def population(*, train_size: int = 12000, epochs: int = 2, data_dir=SHARED_DATA, cache: Path = CACHE,
               infected: bool = True, clean: bool = True, log=print) -> list[Member]:
    """Train or load every member; ground truth travels in ``Member`` (never to the defense)."""
    from backdoorlab.attacks import BadNets
    from backdoorlab.data import clean_subset, load_dataset
    from backdoorlab.io import load_ground_truth, load_model, save_ground_truth, save_model, truth_path

    cache = Path(cache)
    train = load_dataset("mnist", "train", data_dir)
    info = train.info
    sub = clean_subset(train, fraction=train_size / len(train), generator=torch.Generator().manual_seed(0))
    members = []
    specs = [(n, s) for n, s in INFECTED.items()] if infected else []
    specs += [(f"clean-s{i}", None) for i in range(N_CLEAN)] if clean else []
    for i, (name, spec) in enumerate(specs):
        path = cache / f"{name}-n{train_size}-e{epochs}.safetensors"
        if path.exists():
            model, _ = load_model(path)
            goal = load_ground_truth(truth_path(path))[0] if spec else None
        else:
            log(f"training {name} ({i + 1}/{len(specs)})")
            seed = 100 + i
            if spec:
                kind, where, target = spec
                poisoned = BadNets(trigger=make_trigger(kind, where, seed), target=target, rate=0.1).poison(
                    sub, generator=torch.Generator().manual_seed(seed))
                model, goal = _train(poisoned.dataset, info, seed, epochs), poisoned.goal
            else:
                model, goal = _train(sub, info, seed, epochs), None
            save_model(path, model, dataset=info.to_json(), training={"train_size": train_size, "epochs": epochs})
            if goal is not None:
                save_ground_truth(truth_path(path), goal, info={"population": name})
        members.append(Member(name=name, model=model, infected=spec is not None, goal=goal,
                              target=spec[2] if spec else None, kind=spec[0] if spec else "clean"))
    return members


def main() -> None:
    from backdoorlab.data import load_dataset
    from backdoorlab.metrics import evaluate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-size", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    test = load_dataset("mnist", "test", SHARED_DATA)
    rows = []
    for m in population(train_size=a.train_size, epochs=a.epochs):
        ev = evaluate(m.model, test, m.goal)
        rows.append([m.name, m.kind, m.target if m.infected else "-", f"{100 * ev.clean_accuracy:.2f}",
                     "-" if m.goal is None else f"{100 * ev.attack_success_rate:.2f}"])
    print(md_table(["model", "trigger", "target", "CA %", "ASR %"], rows))


if __name__ == "__main__":
    main()
