"""Issue 4 acceptance on MNIST BadNets (pattern, 10% poison, target 0), slow: the defender holds 5%
of the training set (3,000 images) or 100 images; ASR / CA on the full test set."""
from __future__ import annotations

import pytest
import torch

from backdoorlab.attacks import BadNets
from backdoorlab.data import clean_subset, load_dataset
from backdoorlab.defenses.mitigate import IBAU, NAD, FinePruning
from backdoorlab.metrics import evaluate
from backdoorlab.models import build
from backdoorlab.training import fit, init_weights
from backdoorlab.triggers import PatchTrigger

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnist_badnets(shared_data):
    train, test = load_dataset("mnist", "train", shared_data), load_dataset("mnist", "test", shared_data)
    g = torch.Generator().manual_seed(2)  # benchmarks/badnets_mnist.py's pattern model
    p = BadNets(trigger=PatchTrigger.badnets_pattern(train.info.input_shape), target=0, rate=0.1).poison(
        train, generator=g)
    info = train.info
    model = init_weights(build("badnets-cnn", input_shape=info.input_shape, num_classes=10, mean=info.mean,
                               std=info.std), g)
    fit(model, p.dataset, epochs=10, batch_size=128, lr=0.05, generator=g)
    before = evaluate(model.eval(), test, p.goal)
    assert before.attack_success_rate > 0.99
    return model, p.goal, train, test, before


@pytest.mark.parametrize("method, max_asr, max_drop, clean", [
    (NAD(), 0.02, 0.015, ("fraction", 0.05)),
    (IBAU(), 0.02, 0.015, ("fraction", 0.05)),
    (FinePruning(), 0.10, 0.02, ("fraction", 0.05)),
    (IBAU(), 0.10, 0.05, ("per_class", 10)),  # 100 samples: 30 rounds of one step (min_outer_steps)
])
def test_acceptance(method, max_asr, max_drop, clean, mnist_badnets):
    model, goal, train, test, before = mnist_badnets
    g = torch.Generator().manual_seed(0)
    subset = clean_subset(train, **{clean[0]: clean[1]}, generator=g)
    after = evaluate(method.repair(model, subset, generator=torch.Generator().manual_seed(1)).model, test, goal)
    assert after.attack_success_rate <= max_asr
    assert before.clean_accuracy - after.clean_accuracy <= max_drop
