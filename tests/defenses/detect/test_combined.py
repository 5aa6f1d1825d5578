"""Combined verdict: the documented rules on hand-made verdicts, the shared run (one clean set for
all, data-free detectors only with no data, same seed -> same result), input checks."""
from __future__ import annotations

import pytest
import torch

from backdoorlab.defenses.detect import DFTND, DLTND
from backdoorlab.defenses.detect.combined import Combined, CombinedEvidence
from backdoorlab.types import Verdict


def V(flag: bool, suspects=(), score=1.0, threshold=2.0) -> Verdict:
    return Verdict(backdoored=flag, score=score, threshold=threshold, suspects=tuple(suspects))


THREE = (("a", DLTND(steps=2)), ("b", DLTND(steps=2)), ("c", DFTND(steps=2, refine_steps=1)))


def test_lead_follows_the_data_richest_detector():
    c = Combined(detectors=(("df-tnd", THREE[2][1]), ("dl-tnd", THREE[0][1])))
    v = c.combine({"df-tnd": V(True, (5,), 6.0, 3.0), "dl-tnd": V(False, (), 0.6, 0.75)})
    assert not v.backdoored and v.suspects == () and v.score == pytest.approx(0.8) and v.threshold == 1.0
    assert v.evidence.rule == "lead (dl-tnd)" and v.evidence.votes == {5: 1}
    alone = c.combine({"df-tnd": V(True, (5,), 6.0, 3.0)})
    assert alone.backdoored and alone.suspects == (5,) and alone.score == pytest.approx(2.0)


def test_vote_is_two_of_three():
    c = Combined(detectors=THREE, rule="vote")
    one = c.combine({"a": V(True, (4,), 3.0), "b": V(False), "c": V(False)})
    assert not one.backdoored and one.suspects == () and one.threshold == 1.5
    two = c.combine({"a": V(True, (4,), 3.0), "b": V(True, (4, 1), 4.0), "c": V(False, (), 1.0)})
    assert two.backdoored and two.suspects == (4,)
    # score = flags + 0.999 * mean(min(score/threshold, 2) / 2) = 2 + 0.999 * (0.75 + 1 + 0.25) / 3
    assert two.score == pytest.approx(2 + 0.999 * 2.0 / 3)
    assert isinstance(two.evidence, CombinedEvidence) and two.evidence.votes == {4: 2, 1: 1}


def test_vote_without_an_agreed_label_takes_the_most_confident_detector():
    c = Combined(detectors=THREE, rule="vote")
    v = c.combine({"a": V(True, (4,), 2.2), "b": V(True, (7,), 6.0), "c": V(False)})
    assert v.backdoored and v.suspects == (7,)


def test_agree_needs_two_detectors_on_one_label():
    c = Combined(detectors=THREE, rule="agree")
    apart = c.combine({"a": V(True, (4,), 3.0), "b": V(True, (7,), 6.0), "c": V(False, (), 1.0)})
    assert not apart.backdoored and apart.suspects == () and apart.threshold == 1.5
    same = c.combine({"a": V(True, (4,), 3.0), "b": V(True, (7, 4), 6.0), "c": V(False, (4,), 1.0)})
    # a non-flagging detector's suspects do not count; count 2 + 0.999 * mean(0.75, 1, 0.25)
    assert same.backdoored and same.suspects == (4,) and same.evidence.votes == {4: 2, 7: 1}
    assert same.score == pytest.approx(2 + 0.999 * 2.0 / 3)
    alone = c.combine({"c": V(True, (5,), 6.0, 3.0)})
    assert alone.backdoored and alone.suspects == (5,) and alone.evidence.quorum == 1


def test_any_and_all():
    verdicts = {"a": V(True, (4,), 3.0), "b": V(False), "c": V(False)}
    assert Combined(detectors=THREE, rule="any").combine(verdicts).suspects == (4,)
    assert not Combined(detectors=THREE, rule="all").combine(verdicts).backdoored
    assert Combined(detectors=THREE, rule="all").combine({k: V(True, (2,), 3.0) for k in "abc"}).suspects == (2,)
    assert Combined(detectors=THREE, rule="vote", quorum=1).combine(verdicts).backdoored


def test_invalid_fields():
    with pytest.raises(ValueError, match=r"Combined\.rule must"):
        Combined(detectors=THREE, rule="mean")
    with pytest.raises(ValueError, match=r"Combined\.quorum must"):
        Combined(detectors=THREE, quorum=4)
    with pytest.raises(ValueError, match=r"Combined\.detectors must"):
        Combined(detectors=(("x", object()),))
    with pytest.raises(ValueError, match=r"Combined\.detectors must name"):
        Combined.from_names(["nope"])


def test_shared_run_and_no_data(clean_model, digits):
    train, _ = digits
    c = Combined.from_names(["dl-tnd", "df-tnd"], {"dl-tnd": {"steps": 3}, "df-tnd": {"steps": 3, "refine_steps": 1}},
                            rule="vote")
    seen = []
    v1 = c.detect(clean_model, train, generator=torch.Generator().manual_seed(0),
                  progress=lambda d, t: seen.append((d, t)))
    assert set(v1.evidence.verdicts) == {"dl-tnd", "df-tnd"} and v1.evidence.skipped == ()
    assert seen[-1] == (2000, 2000) and all(t == 2000 for _, t in seen)
    v2 = c.detect(clean_model, train, generator=torch.Generator().manual_seed(0))
    assert (v1.score, v1.suspects) == (v2.score, v2.suspects)
    nodata = c.detect(clean_model, None, generator=torch.Generator().manual_seed(0))
    assert nodata.evidence.skipped == ("dl-tnd",) and set(nodata.evidence.verdicts) == {"df-tnd"}
    assert nodata.evidence.quorum == 1
    with pytest.raises(ValueError, match="needs clean data"):
        Combined.from_names(["dl-tnd"]).detect(clean_model, None)


def test_cli_scan_table_combined_and_no_data(clean_model, digits, tmp_path, capsys):
    import json

    from backdoorlab.cli import main
    from backdoorlab.io import save_model

    train, _ = digits
    path = tmp_path / "m.safetensors"
    save_model(path, clean_model, dataset=train.info.to_json())
    fast = ["--set", "dl-tnd.steps=3", "--set", "df-tnd.steps=3", "--set", "df-tnd.refine-steps=1", "--no-files"]
    assert main(["scan", str(path), "--detectors", "dl-tnd,df-tnd", "--json", *fast]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["detectors"]) == {"dl-tnd", "df-tnd"} and data["rule"] == "lead"
    assert data["backdoored"] == data["detectors"]["dl-tnd"]["backdoored"] == data["combined"]["backdoored"]
    assert main(["scan", str(path), "--detectors", "dl-tnd,df-tnd", "--no-data", "--json", *fast]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["detectors"]) == {"df-tnd"} and data["combined"]["skipped"] == ["dl-tnd"]
    assert data["clean_samples"] == 0
    assert main(["scan", str(path), "--detectors", "dl-tnd", "--no-data", *fast]) == 2
    assert main(["scan", str(path), "--detectors", "dl-tnd,df-tnd", *fast]) == 0
    out = capsys.readouterr().out
    assert "summary" in out and "combined" in out   # rich may wrap long cells at 80 columns
