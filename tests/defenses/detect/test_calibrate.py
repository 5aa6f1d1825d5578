"""Threshold calibration on known-clean reference models: the largest reference score becomes the
threshold, the calibrated detector flags none of its references, every reference sees the same random
draws, and bad input is refused; ``scan --reference`` on real detectors."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from backdoorlab.defenses.detect import DFTND, NeuralCleanse, calibrate
from backdoorlab.defenses.detect.calibrate import threshold_field
from backdoorlab.roles import Detector
from backdoorlab.types import Verdict


@dataclass(frozen=True, kw_only=True)
class Scored(Detector):
    """Score = the model's ``score`` attribute plus the first uniform draw of the generator / 1000."""

    threshold: float = 0.5

    def detect(self, model, clean, *, generator=None, progress=None) -> Verdict:
        noise = float(torch.rand(1, generator=generator)) / 1000 if generator is not None else 0.0
        s = model.score + noise
        return Verdict(backdoored=s > self.threshold, score=s, threshold=self.threshold, suspects=())


class M(torch.nn.Module):
    def __init__(self, score: float):
        super().__init__()
        self.score = score


def test_threshold_is_the_largest_reference_score_and_flags_none():
    refs = [M(0.3), M(0.9), M(0.6)]
    seen = []
    cal = calibrate(Scored(), refs, progress=lambda d, t: seen.append((d, t)))
    assert cal.scores == (0.3, 0.9, 0.6) and cal.threshold == 0.9 and cal.preset == 0.5
    assert cal.field == "threshold" and cal.detector.threshold == 0.9
    assert [cal.detector.detect(r, None).backdoored for r in refs] == [False, False, False]
    assert Scored().detect(refs[1], None).backdoored          # the preset flagged the 0.9 reference
    assert cal.detector.detect(M(0.95), None).backdoored       # a model above every reference still is
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_every_reference_sees_the_callers_generator_state_which_is_left_untouched():
    g = torch.Generator().manual_seed(7)
    first = float(torch.rand(1, generator=torch.Generator().manual_seed(7))) / 1000
    cal = calibrate(Scored(), [M(0.1), M(0.2)], generator=g)
    assert cal.scores == pytest.approx((0.1 + first, 0.2 + first))
    assert float(torch.rand(1, generator=g)) / 1000 == pytest.approx(first)   # g was not advanced


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        calibrate(Scored(), [])
    with pytest.raises(ValueError, match="reference model 1.*non-finite"):
        calibrate(Scored(), [M(0.1), M(float("nan"))])

    @dataclass(frozen=True)
    class NoThreshold(Detector):
        def detect(self, model, clean, *, generator=None, progress=None):
            return Verdict(backdoored=False, score=0.0, threshold=0.0, suspects=())

    with pytest.raises(TypeError, match="NoThreshold has no threshold field"):
        calibrate(NoThreshold(), [M(0.1)])


def test_fpr_leaves_that_fraction_of_references_above():
    refs = [M(0.3), M(0.9), M(0.6), M(0.1)]
    cal = calibrate(Scored(), refs, fpr=0.25)
    assert cal.threshold == 0.6 and sum(cal.detector.detect(r, None).backdoored for r in refs) == 1
    with pytest.raises(ValueError, match="fpr"):
        calibrate(Scored(), refs, fpr=1.0)


def test_a_threshold_the_detector_refuses_names_the_reference_scores():
    @dataclass(frozen=True, kw_only=True)
    class Positive(Scored):
        def __post_init__(self):
            if self.threshold <= 0:
                raise ValueError(f"Positive.threshold must be > 0; got {self.threshold}.")

    with pytest.raises(ValueError, match=r"reference scores \(-0.2, -0.5\).*does not accept.*must be > 0"):
        calibrate(Positive(), [M(-0.2), M(-0.5)])


def test_threshold_fields_of_the_library_detectors():
    assert threshold_field(NeuralCleanse()) == "anomaly_threshold"
    assert threshold_field(DFTND()) == "threshold"


def test_real_detector_calibrated_on_models_flags_none_of_them(clean_model, badnets):
    """DF-TND (short budget) on the clean digits model and the BadNets one used as 'references': the
    calibrated threshold is the larger score and neither model is flagged with it."""
    det = DFTND(steps=6, refine_steps=2)
    refs = [clean_model, badnets[0]]
    cal = calibrate(det, refs, None, generator=torch.Generator().manual_seed(0))
    direct = [det.detect(r, None, generator=torch.Generator().manual_seed(0)).score for r in refs]
    assert cal.scores == pytest.approx(tuple(direct)) and cal.threshold == max(direct)
    for r in refs:
        v = cal.detector.detect(r, None, generator=torch.Generator().manual_seed(0))
        assert not v.backdoored and v.threshold == cal.threshold


def test_cli_scan_with_references(clean_model, badnets, digits, tmp_path, capsys):
    from backdoorlab.cli import main
    from backdoorlab.io import save_model

    train, _ = digits
    clean_path, bd_path = tmp_path / "clean.safetensors", tmp_path / "bd.safetensors"
    save_model(clean_path, clean_model, dataset=train.info.to_json())
    save_model(bd_path, badnets[0], dataset=train.info.to_json())
    fast = ["--detectors", "dl-tnd,df-tnd", "--clean-per-class", "1", "--set", "df-tnd.steps=6",
            "--set", "df-tnd.refine-steps=2", "--set", "dl-tnd.steps=3", "--set", "dl-tnd.search-steps=2",
            "--no-files", "--json"]
    assert main(["scan", str(clean_path), "--reference", str(clean_path), *fast]) == 0
    data = json.loads(capsys.readouterr().out)
    # the scanned model is its own reference: each detector (the second one too, after the first has drawn
    # from the generator) sees the same data and draws, so threshold = its score and nothing is flagged
    for name, preset in (("df-tnd", DFTND().threshold), ("dl-tnd", 0.75)):
        d = data["detectors"][name]
        assert d["calibration"]["references"] == [str(clean_path)] and d["calibration"]["preset"] == preset
        assert d["calibration"]["scores"] == [d["score"]]
        if name == "dl-tnd" and d["score"] == -1.0:     # on DL-TND's floor: the preset stays, the note says why
            assert d["threshold"] == preset and "floor" in d["calibration"]["note"]
        else:
            assert d["threshold"] == d["score"] and "note" not in d["calibration"]
        assert d["backdoored"] is False
    cal = data["detectors"]["df-tnd"]["calibration"]
    assert cal["margin_threshold"] == pytest.approx(cal["threshold"] * 27.0 / 3.5)
    assert cal["efficiency_threshold"] == pytest.approx(cal["threshold"] * 1.0 / 3.5)
    assert "margin_threshold" not in data["detectors"]["dl-tnd"]["calibration"]
    fast = fast[:1] + ["df-tnd", "--no-data"] + fast[4:]
    assert main(["scan", str(bd_path), "--reference", str(clean_path), *fast[:-1]]) == 0   # text output
    text = " ".join(capsys.readouterr().out.split())         # rich wraps long notes
    assert "the largest score of 1 reference model(s)" in text and "the margin alone now flags above" in text
    assert "the margin per mask pixel above" in text
    # a reference of another task is refused before anything runs
    other = tmp_path / "other.safetensors"
    info = train.info.to_json() | {"name": "not-digits"}
    save_model(other, clean_model, dataset=info)
    assert main(["scan", str(bd_path), "--reference", str(other), *fast]) == 2
    assert "same task" in capsys.readouterr().err


def test_references_all_on_the_score_floor_keep_the_preset():
    """DL-TND with ``reach`` scores -1 when no label is reached: references that all score -1 would set
    T = -1 and flag any model with a label above it, so the preset stays (with a note); one reference
    above the floor calibrates as usual; without ``reach`` there is no floor."""
    from backdoorlab.defenses.detect import DLTND
    from backdoorlab.defenses.detect.calibrate import calibrated_threshold

    assert DLTND().score_floor == -1.0 and DLTND(reach=False).score_floor is None
    assert not hasattr(Scored(), "score_floor")          # detectors without a floor calibrate as before
    t, note = calibrated_threshold([-1.0, -1.0], 0.0, 0.75, -1.0)
    assert t == 0.75 and "floor -1" in note
    assert calibrated_threshold([-1.0, 0.6], 0.0, 0.75, -1.0) == (0.6, "")
    assert calibrated_threshold([-1.0, -1.0], 0.0, 0.75, None) == (-1.0, "")
