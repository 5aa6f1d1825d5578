import math

import pytest
import torch

from backdoorlab import metrics
from backdoorlab._stats import anomaly_index, auroc, median, clopper_pearson, threshold_at_fpr, tpr_at_fpr, wilson_interval
from backdoorlab.data import ImageDataset
from backdoorlab.triggers import PatchTrigger
from backdoorlab.types import InstanceGoal, TriggerGoal


def test_wilson_hand_computed():
    # k=8, n=10, z=1.96: centre=(0.8+0.1921)/1.3842=0.7167, half=1.96*sqrt(0.016+0.00096)/1.3842=0.1844
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_clopper_pearson_extremes():
    lo, hi = clopper_pearson(10, 10, alpha=0.05)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), rel=1e-6)


def test_anomaly_index_hand_computed():
    v = torch.tensor([10.0, 11.0, 9.0, 10.0, 2.0])
    # median 10, |dev| = [0,1,1,0,8], MAD = 1 -> index = |dev| / 1.4826
    idx = anomaly_index(v)
    assert idx[4] == pytest.approx(8 / 1.4826) and idx[0] == 0


def test_anomaly_index_uses_numpy_median_for_even_counts():
    """Neural Cleanse's official code takes numpy medians: the mean of the two middle values."""
    v = torch.tensor([1.0, 2.0, 4.0, 10.0])
    # median 3, |dev| = [2, 1, 1, 7] -> MAD median 1.5; torch.median would give 2 and MAD 1
    assert median(v) == pytest.approx(3.0)
    assert anomaly_index(v)[3] == pytest.approx(7 / (1.5 * 1.4826))
    with pytest.raises(ValueError, match="empty"):
        median(torch.tensor([]))


def test_auroc_with_ties():
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])) == pytest.approx(0.5)
    assert math.isnan(auroc(torch.tensor([1.0]), torch.tensor([1])))


def test_threshold_and_tpr_at_fpr():
    clean = torch.arange(100, dtype=torch.float64)  # 0..99
    t = threshold_at_fpr(clean, 0.05)
    assert t == 94 and int((clean > t).sum()) == 5
    s = torch.cat([clean, torch.tensor([95.0, 200.0])])
    lab = torch.cat([torch.zeros(100), torch.ones(2)])
    assert tpr_at_fpr(s, lab, 0.05) == pytest.approx(1.0)


class _Fixed(torch.nn.Module):
    """Predicts class 2 when pixel (0,0) is bright, else the label encoded in pixel (0,1)*10."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        lab = (x[:, 0, 0, 1] * 10).round().long()
        lab = torch.where(x[:, 0, 0, 0] > 0.5, torch.full_like(lab, 2), lab)
        return torch.nn.functional.one_hot(lab, 10).float() + 0 * self.w


def test_asr_ra_definitions():
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    x = torch.zeros(6, 1, 3, 3)
    x[:, 0, 0, 1] = y / 10
    pred_wrong = y.clone()
    x[5, 0, 0, 1] = 0.1  # sample 5 misclassified as 1 when clean
    ds = ImageDataset(x, y)
    m = _Fixed()
    trig = PatchTrigger.square((1, 3, 3), 1, "top-left", margin=0)
    goal = TriggerGoal(trigger=trig, target=2)
    assert metrics.clean_accuracy(m, ds) == pytest.approx(5 / 6)
    # ASR over the 5 samples whose label is not 2: all go to 2
    assert metrics.attack_success_rate(m, goal, ds) == 1.0
    assert metrics.robust_accuracy(m, goal, ds) == 0.0
    ev = metrics.evaluate(m, ds, goal)
    assert ev.n_stamped == 5 and ev.per_class_accuracy[5] == 0.0
    a2a = TriggerGoal.all_to_all(trig, 10)
    # stamped -> always 2; wanted y+1: only y=1 succeeds among 6 relevant samples
    assert metrics.attack_success_rate(m, a2a, ds) == pytest.approx(1 / 6)
    inst = InstanceGoal(x=x[:2], target=0)
    assert metrics.attack_success_rate(m, inst) == pytest.approx(0.5)
    del pred_wrong
