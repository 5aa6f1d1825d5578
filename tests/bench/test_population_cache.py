"""benchmarks/population.py's verdict cache: a cached verdict made before a module its detector imports
changed is reported as stale (the cache key holds only the detector module's own code)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import population  # noqa: E402


def test_dependencies_are_the_package_modules_the_detector_imports():
    deps = population._dependency_hashes("df-tnd")
    # df_tnd.py imports these directly (relative imports); itself is in the cache key, not here
    assert {"_torch.py", "_validation.py", "roles.py", "triggers.py", "types.py"} <= set(deps)
    assert "defenses/detect/df_tnd.py" not in deps
    assert all(len(h) == 10 for h in deps.values())


def _member(tmp_path):
    return population.Member(name="m", model=None, infected=False, goal=None, target=None, kind="clean",
                             ca=1.0, asr=None, attempts=1, cache=tmp_path)


def test_stale_cached_verdict_is_reported(tmp_path):
    code, _ = population._source_hashes("df-tnd")
    deps = population._dependency_hashes("df-tnd")
    rec = {"backdoored": False, "score": 1.0, "threshold": 2.5, "suspects": [], "seconds": 1.0,
           "evidence": None, "dependencies": deps}
    path = tmp_path / "m.verdicts.json"
    path.write_text(json.dumps({f"df-tnd:{{}}:{code}": rec}))
    logged = []
    assert population.cached_verdict(_member(tmp_path), "df-tnd", None, run=False, log=logged.append) == rec
    assert logged == []                                      # same dependencies: silent
    rec["dependencies"] = dict(deps, **{"triggers.py": "0000000000"})
    path.write_text(json.dumps({f"df-tnd:{{}}:{code}": rec}))
    assert population.cached_verdict(_member(tmp_path), "df-tnd", None, run=False, log=logged.append) == rec
    assert len(logged) == 1 and "triggers.py" in logged[0] and "WARNING" in logged[0]


def test_stale_dependencies_names_the_changed_modules():
    deps = population._dependency_hashes("df-tnd")
    assert population.stale_dependencies("df-tnd", {"score": 1.0}) is None          # no record: not checkable
    assert population.stale_dependencies("df-tnd", None) is None
    assert population.stale_dependencies("df-tnd", {"dependencies": dict(deps)}) == []
    old = dict(deps, **{"triggers.py": "0000000000", "gone.py": "1111111111"})
    del old["roles.py"]
    assert population.stale_dependencies("df-tnd", {"dependencies": old}) == ["gone.py", "roles.py", "triggers.py"]


def test_dl_tnd_official_row_is_read_from_the_evidence():
    """detectors.py's official-rule DL-TND row: labels whose plain-cosine score exceeds the preset 0.75,
    highest first, from the same run's evidence (no second optimisation)."""
    import detectors

    raw = {"backdoored": False, "score": -1.0, "threshold": 0.75, "suspects": [],
           "evidence": {"official_similarity": [0.1, 0.8, 0.75, 0.9, -1.0]}}
    v = detectors._official_dl(raw)
    assert v.backdoored and v.suspects == (3, 1) and v.score == 0.9 and v.threshold == 0.75   # 0.75 is not > T
    raw["evidence"]["official_similarity"] = [0.2, 0.75]
    assert not detectors._official_dl(raw).backdoored


def test_df_tnd_previous_row_is_read_from_the_evidence():
    """detectors.py's sixth-session DF-TND row: each label reported by its start with the largest eq. 6
    objective, from the same run's evidence of every start (no second maximisation), at the run's T."""
    import detectors

    # label 0: start 1 has the larger objective but margin 1 (start 0: margin 5); label 1: margins 3 and 2.5.
    # The run's own (margin) verdict: label 0, ratio 5 / 3; the objective's: label 1, ratio 3 / 1
    raw = {"backdoored": True, "score": 5 / 3, "threshold": 1.5, "suspects": [0],
           "evidence": {"start_increase": [[[6.0, 1.0], [9.0, 8.0]], [[-1.0, 3.0], [0.5, 3.0]]],
                        "start_mask_l1": [[40.0, 50.0], [20.0, 100.0]],
                        "start_objectives": [[1.0, 2.0], [3.0, 1.0]]}}
    v = detectors._previous_df(raw)
    assert v.backdoored and v.suspects == (1,) and v.score == 3.0 and v.threshold == 1.5
    raw["threshold"] = 3.0
    assert not detectors._previous_df(raw).backdoored
