"""Shared session fixtures on scikit-learn's digits (no download; each model trains in seconds)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backdoorlab.attacks import BadNets
from backdoorlab.data import load_dataset
from backdoorlab.models import HandWiredBackdoor, build
from backdoorlab.training import fit, init_weights
from backdoorlab.triggers import PatchTrigger

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def digits_model(info, seed: int = 0):
    return init_weights(build("digits-cnn", input_shape=info.input_shape, num_classes=info.num_classes,
                              mean=info.mean, std=info.std), gen(seed))


def train_digits(dataset, info, seed: int = 0, epochs: int = 30):
    m = digits_model(info, seed)
    fit(m, dataset, epochs=epochs, batch_size=64, lr=0.05, generator=gen(seed))
    return m.eval()


@pytest.fixture(scope="session")
def digits():
    """(train, test) ImageDatasets of the 8x8 digits (1257 / 540 samples)."""
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="session")
def clean_model(digits):
    """DigitsCNN trained on clean digits (test accuracy about 98%)."""
    train, _ = digits
    return train_digits(train, train.info, seed=0)


@pytest.fixture(scope="session")
def badnets(digits):
    """(model, goal, poisoned): DigitsCNN trained with BadNets, 3x3 white square bottom-right ->
    target 0, 10% poison (test ASR 100%, CA about 98%)."""
    train, _ = digits
    trig = PatchTrigger.square(train.info.input_shape, 3, "bottom-right", margin=0)
    poisoned = BadNets(trigger=trig, target=0, rate=0.1).poison(train, generator=gen(1))
    model = train_digits(poisoned.dataset, train.info, seed=1)
    return model, poisoned.goal, poisoned


@pytest.fixture(scope="session")
def handwired(clean_model, digits):
    """(backdoored, clean_twin, trigger, target): a 2x2 white patch at rows/cols 0-1 wired to label 3."""
    train, _ = digits
    trig = PatchTrigger.square(train.info.input_shape, 2, "top-left", margin=0)
    return HandWiredBackdoor(clean_model, trig, target=3).eval(), clean_model, trig, 3


@pytest.fixture(scope="session")
def shared_data():
    if not (SHARED_DATA / "mnist.npz").exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
