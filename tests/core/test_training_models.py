import pytest
import torch

from backdoorlab import metrics
from backdoorlab.models import ARCHITECTURES, build
from backdoorlab.training import fit, init_weights

SHAPES = {"badnets-cnn": (1, 28, 28), "digits-cnn": (1, 8, 8), "gtsrb-cnn": (3, 32, 32),
          "preact-resnet18": (3, 32, 32), "mlp": (1, 8, 8)}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_model_is_head_of_features(arch):
    kw = {"width": 8} if arch == "preact-resnet18" else {}
    m = build(arch, input_shape=SHAPES[arch], num_classes=7, **kw).eval()
    x = torch.rand(2, *SHAPES[arch])
    assert torch.allclose(m(x), m.head(m.features(x)))
    assert m(x).shape == (2, 7)
    if m.last_conv:
        assert isinstance(m.get_submodule(m.last_conv), torch.nn.Module)


def test_badnets_cnn_parameter_count_matches_paper():
    assert sum(p.numel() for p in build("badnets-cnn").parameters()) == 281_034


def test_normalize_is_inside():
    m = build("digits-cnn", mean=[0.5], std=[0.25])
    x = torch.full((1, 1, 8, 8), 0.75)
    assert torch.allclose(m.normalize(x), torch.ones_like(x))


def test_fit_is_deterministic_and_learns(digits):
    train, test = digits

    def run():
        g = torch.Generator().manual_seed(3)
        m = init_weights(build("digits-cnn", mean=train.info.mean, std=train.info.std), g)
        fit(m, train, epochs=3, batch_size=64, lr=0.05, generator=g)
        return m

    a, b = run(), run()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert metrics.clean_accuracy(a, test) > 0.85


def test_fit_rejects_bad_hyperparameters(digits):
    m = build("digits-cnn")
    with pytest.raises(ValueError, match="fit.epochs must be a positive integer; got 0"):
        fit(m, digits[0], epochs=0)
    with pytest.raises(ValueError, match="fit.optimizer must be one of"):
        fit(m, digits[0], optimizer="rmsprop")


def test_badnets_fixture_backdoor(badnets, clean_model, digits):
    model, goal, _ = badnets
    _, test = digits
    assert metrics.attack_success_rate(model, goal, test) >= 0.95
    assert metrics.attack_success_rate(clean_model, goal, test) <= 0.1
    assert metrics.clean_accuracy(model, test) >= 0.95


def test_handwired_backdoor_exact(handwired, digits):
    bd, twin, trig, target = handwired
    _, test = digits
    from backdoorlab.types import TriggerGoal

    goal = TriggerGoal(trigger=trig, target=target)
    assert metrics.attack_success_rate(bd, goal, test) == 1.0
    assert torch.equal(bd(test.x).argmax(1), twin(test.x).argmax(1))
