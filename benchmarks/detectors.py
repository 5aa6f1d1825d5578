"""Benchmark for issue 7: Neural Cleanse, DL-TND and DF-TND on the MNIST detection population, plus
the combined verdict.

Population: ``benchmarks/population.py`` (the single builder, shared with the Neural Cleanse
benchmark of issue 3): 10 BadNets-infected MNIST CNNs (targets covering all ten labels; single
pixel, BadNets pattern, 3x3-5x5 squares, blend; several positions) and 10 clean ones, each passing
CA >= 98% / ASR >= 90% on the MNIST test set.  Each detector runs with the library defaults on the
data ``backdoorlab scan --seed 0`` would give it:
  * Neural Cleanse: 5% clean training subset (3,000 images, the scan default),
  * DL-TND: ONE clean image per class (``--clean-per-class 1``),
  * DF-TND: NO data (``--no-data``; random-noise inputs),
and ``Combined`` (rule in ``defenses/detect/combined.py``) over the three verdicts.  NC and DL-TND use
the papers' rules (MAD index 2; the official code's λ bisection and T = 0.75 on the 0.25-quantile cosine,
where DL-TND's seventh-session ``reach`` rule counts an image's cosine only when both perturbations send it
to the label - set with populations a-d in view; the official plain-cosine rule is shown beside it);
DF-TND uses whatever its module defines (see df_tnd.py; its rules were set with populations a, b and c
in view and population d was their blind test; its eighth-session start choice - each label reported by the
start with the largest margin - was set with populations a-e in view).  Population e, declared and trained
before the seventh session's DL-TND rule was fixed, is a blind test of that rule and NC's; population f,
declared and trained before the eighth session's DF-TND change was fixed, is the blind test of every rule in
use - each results file says which rules it tests blind.

Verdicts are cached per model in ``runs/population*/NAME.verdicts.json`` (keyed by the detector module's
code without docstrings), so an interrupted run resumes and a changed detector is re-run.

    OMP_NUM_THREADS=1 python benchmarks/population.py                 # train + cache the population
    OMP_NUM_THREADS=1 python benchmarks/detectors.py --detectors neural-cleanse,dl-tnd [--shard 0/2]
    OMP_NUM_THREADS=1 python benchmarks/detectors.py                  # all three; writes results/detectors.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import SHARED_DATA, md_table, write_result  # noqa: E402
from population import EPOCHS, POPULATIONS, cached_verdict, calibration, population, stale_dependencies  # noqa: E402
from backdoorlab.defenses.detect.combined import RULES  # noqa: E402
from backdoorlab.defenses.detect.df_tnd import EFFICIENCY_SCALE, MARGIN_SCALE  # noqa: E402

DETECTOR_NAMES = ("neural-cleanse", "dl-tnd", "df-tnd")
CALIBRATED = ("dl-tnd", "df-tnd")   # shown again with T = the largest score of the clean reference models
# DF-TND's sixth-session rule (each label's start with the largest eq. 6 objective; the eighth session reports
# the start with the largest margin), read from the same run's evidence (every start's increases are kept), so
# the change is compared on the same maximisations in one table
PREVIOUS = "df-tnd (session 6: best start by eq. 6 objective)"
# DL-TND's official rule (plain logit cosines, no ``reach``; what every session before the seventh used), read
# from the same run's evidence (``official_similarity``: the same optimisation, scored the official way)
OFFICIAL_DL = "dl-tnd (official rule: plain cosines, T = 0.75)"


def main(argv=None) -> int:
    from backdoorlab.data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shard", default="0/1", help="I/N: this process handles members i with i %% N == I")
    ap.add_argument("--detectors", default=",".join(DETECTOR_NAMES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="do not write results/detectors.md")
    ap.add_argument("--population", default="a", choices=sorted(POPULATIONS),
                    help="a: the evaluation population (results/detectors.md); b-f: the same members with "
                         "fresh seeds, re-tests (results/detectors_b.md ... _f.md); f is the blind test of "
                         "every rule in use; each results file says which rules its population tests blind)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shard = tuple(int(v) for v in args.shard.split("/"))
    names = [n for n in args.detectors.split(",") if n]
    train = load_dataset("mnist", "train", SHARED_DATA)
    records = []
    for m in population(shard=shard, which=args.population, train_missing=False):
        records.append({"name": m.name, "infected": m.infected, "target": m.target, "ca": m.ca, "asr": m.asr,
                        "raw": {n: cached_verdict(m, n, train) for n in names}})
    # the TNDs' thresholds recalibrated on the calib-* clean reference models (never the evaluation ones)
    refs = calibration(train_missing=False) if set(CALIBRATED) & set(names) else []
    calib = {n: [cached_verdict(m, n, train) for m in refs] for n in CALIBRATED if n in names and refs}
    if (shard != (0, 1) or any(v is None for r in records for v in r["raw"].values())
            or any(v is None for vs in calib.values() for v in vs)):
        print("some verdicts are still being computed by another process; no report")
        return 0
    body = report(records, names, calib, args.population) + "\n\n" + _cache_check(records, calib)
    if not args.no_write and set(names) == set(DETECTOR_NAMES):
        print(write_result("detectors" if args.population == "a" else f"detectors_{args.population}", body))
    print(body)
    return 0


def _cache_check(records, calib) -> str:
    """One line on the cached verdicts this report read: how many record their detector's imported modules
    (``population.stale_dependencies``) and how many of those predate a change in one of them."""
    checks = [stale_dependencies(n, v) for r in records for n, v in r["raw"].items() if v]
    checks += [stale_dependencies(n, v) for n, vs in calib.items() for v in vs]
    known = [c for c in checks if c is not None]
    stale = sorted({m for c in known for m in c})
    return (f"Cache check: of the {len(checks)} cached verdicts this report read, {len(known)} record the code of "
            f"the modules their detector imports, {sum(bool(c) for c in known)} of them stale"
            + (f" ({', '.join(stale)} changed since)" if stale else "") + f"; the other {len(checks) - len(known)} "
            "were computed before that record existed (commit 8c9a68e) and cannot be checked (`benchmarks/"
            "population.py`'s `stale_dependencies`).")


def _verdicts(rec, names):
    from backdoorlab.defenses.detect.combined import Combined
    from backdoorlab.defenses.detect import DETECTORS
    from backdoorlab.types import Verdict

    singles = {n: Verdict(backdoored=r["backdoored"], score=r["score"], threshold=r["threshold"],
                          suspects=tuple(r["suspects"])) for n, r in rec["raw"].items()}
    dets = tuple((n, DETECTORS[n]()) for n in names)
    out = dict(singles)
    for rule in RULES:
        out["combined" if rule == Combined.rule else f"combined-{rule}"] = \
            Combined(detectors=dets, rule=rule).combine(singles)
    return out


def _dl_verdict(sim, threshold: float):
    """DL-TND's decision on per-label similarities: the labels with s_k > T, highest first."""
    from backdoorlab.types import Verdict

    flagged = tuple(sorted((k for k, s in enumerate(sim) if s > threshold), key=lambda k: -sim[k]))
    return Verdict(backdoored=bool(flagged), score=max(sim), threshold=threshold, suspects=flagged)


def _recalibrated(name: str, raw: dict, threshold: float):
    """The verdict with threshold T replaced, as ``defenses.detect.calibrate`` would give it: DL-TND flags
    the labels whose similarity s_k > T, DF-TND its top-scoring label when that score > T."""
    from backdoorlab.types import Verdict

    if name == "dl-tnd":
        return _dl_verdict(raw["evidence"]["similarity"], threshold)
    score = raw["evidence"].get("score", raw["evidence"]["ratio"])
    top = max(range(len(score)), key=lambda k: score[k])
    flagged = (top,) if score[top] > threshold else ()
    return Verdict(backdoored=bool(flagged), score=raw["score"], threshold=threshold, suspects=flagged)


def _previous_df(raw: dict):
    """DF-TND's verdict under the sixth session's start choice (largest eq. 6 objective), from the evidence of
    the same run (``decide`` on every start's increases), at the run's T."""
    from backdoorlab.defenses.detect.df_tnd import decide
    from backdoorlab.types import Verdict

    e = raw["evidence"]
    r = decide(torch.tensor(e["start_increase"]), torch.tensor(e["start_mask_l1"]),
               torch.tensor(e["start_objectives"]), select="objective", threshold=raw["threshold"])
    return Verdict(backdoored=bool(r.flagged), score=float(r.score.max()), threshold=raw["threshold"],
                   suspects=tuple(r.flagged))


def _official_dl(raw: dict):
    """DL-TND's verdict under the official rule (plain logit cosines, the preset T), from the evidence."""
    from backdoorlab.defenses.detect import DLTND

    return _dl_verdict(raw["evidence"]["official_similarity"], DLTND().threshold)


def _failures(inf, cln, t_cal, calib) -> str:
    lines = []
    for r in inf:
        v = r["raw"].get("dl-tnd")
        if v is not None and not (v["backdoored"] and v["suspects"][:1] == [r["target"]]):
            e = v["evidence"]
            lines.append(f"- DL-TND misses {r['name']}: at the true target s = {e['similarity'][r['target']]:.3f}, "
                         f"its universal perturbation sends {100 * e['universal_success'][r['target']]:.0f}% of the "
                         f"other images there (mask L1 {e['mask_l1'][r['target']]:.1f})"
                         + (f"; official plain-cosine s = {e['official_similarity'][r['target']]:.3f}"
                            if "official_similarity" in e else "") + ".")
    for r in cln:
        v = r["raw"].get("dl-tnd")
        if v is not None and v["backdoored"]:
            e, k = v["evidence"], v["suspects"][0]
            lines.append(f"- DL-TND flags clean {r['name']} at label {k}: s = {e['similarity'][k]:.3f} with a universal "
                         f"perturbation that reaches {100 * e['universal_success'][k]:.0f}% of the other images.")
    for r in inf + cln:
        v, o = r["raw"].get("dl-tnd"), r["verdicts"].get(OFFICIAL_DL)   # the row report() derived
        if v is None or o is None:
            continue
        if o.backdoored != v["backdoored"] or o.suspects[:1] != tuple(v["suspects"][:1]):
            e = v["evidence"]
            k = o.suspects[0] if o.backdoored else v["suspects"][0]
            lines.append(f"- DL-TND's official rule {'flags' if o.backdoored else 'does not flag'} {r['name']} "
                         f"({'infected, target ' + str(r['target']) if r['infected'] else 'clean'}) at label {k} "
                         f"(plain-cosine s = {e['official_similarity'][k]:.3f}, with reach {e['similarity'][k]:.3f}; "
                         f"in the round the reach rule scored, the universal perturbation sends "
                         f"{100 * e['universal_success'][k]:.0f}% of the other images there).")
    if calib:
        top = max(r["raw"]["dl-tnd"]["score"] for r in cln)
        lines.append(f"- The {len(calib)} clean calibration models scored at most {t_cal:.3f} "
                     f"({'below' if t_cal < 0.75 else 'above'} the official T = 0.75), the evaluation's clean models "
                     f"at most {top:.3f}" + (": clean DL-TND scores spread wider than the calibration models show."
                                              if top > t_cal else "."))
    for name in ("dl-tnd", "df-tnd"):
        for r in inf:
            v = r["raw"].get(name)
            if v is not None and v["backdoored"] and v["suspects"][0] != r["target"]:
                lines.append(f"- {name.upper()} flags {r['name']} at label {v['suspects'][0]}, not its "
                             f"target {r['target']}: counted as detected, not as a right target.")
    for r in inf + cln:     # DF-TND: per-label margins s_k read in each label's own maximisation
        v = r["raw"].get("df-tnd")
        if v is None or v["backdoored"] == r["infected"] or "margin" not in (v["evidence"] or {}):
            continue
        e = v["evidence"]
        s = e["margin"]
        sc = e.get("score", e.get("ratio", s))
        k1 = max(range(len(s)), key=lambda k: sc[k])                  # the top-scoring label (the rule's)
        k2 = max((k for k in range(len(s)) if k != k1), key=lambda k: s[k])
        what = (f"misses {r['name']}: at the true target s = {s[r['target']]:.1f} logits;" if r["infected"]
                else f"flags clean {r['name']}:")
        ratio = e.get("ratio", [v["score"]] * len(s))[k1]
        eff_text = "" if "efficiency" not in e else (f"; margin per mask pixel {e['efficiency'][k1]:.2f} (mask L1 "
                                                      f"{e['mask_l1'][k1]:.1f})")
        lines.append(f"- DF-TND {what} its top-scoring label is {k1} (margin {s[k1]:.1f}), the largest other margin "
                     f"label {k2}'s ({s[k2]:.1f}): ratio {ratio:.2f}{eff_text}, score {v['score']:.2f} vs T = "
                     f"{v['threshold']:.1f} (the margin alone counts above {v['threshold'] * MARGIN_SCALE:.1f} logits, "
                     f"the margin per mask pixel above {v['threshold'] * EFFICIENCY_SCALE:.2f}).")
    return "\n".join(lines) or "none"


BLINDNESS = {   # what each re-test population was trained after (see df_tnd.py's docstring for the history)
    "b": ("It was trained after DF-TND's margin threshold T_abs and the calibrated DL-TND threshold were fixed: a "
          "blind test of those rules. NOT blind for DF-TND's margin-per-mask-pixel criterion (T_eff), which was "
          "added in the next session after this population's DF-TND misses had been seen (population c is its "
          "blind test). NOT blind for DF-TND's three starts and T = 2.5 either (sixth session), chosen on "
          "populations a, b and c (population d is their blind test). NOT blind for DL-TND's reach rule (seventh "
          "session), chosen with populations a-d in view (population e is its blind test), nor for DF-TND's "
          "eighth-session start choice, set with populations a-e in view (population f is its blind test). "),
    "c": ("It was trained after every threshold in use in the fifth session was fixed - DF-TND's one-start T = 3.5, "
          "T_abs and its margin-per-mask-pixel criterion T_eff, and the calibrated DL-TND threshold - and was their "
          "blind test (DF-TND then: 7/10 detected, 1/10 clean flagged, not met; calibrated 8/10, 1/10; git "
          "6f6f6f6:benchmarks/results/detectors_c.md). NOT blind for DF-TND's three starts and T = 2.5 (sixth "
          "session), chosen on populations a, b and c after that result; population d is their blind test. NOT "
          "blind for DL-TND's reach rule (seventh session), chosen with populations a-d in view (population e is "
          "its blind test), nor for DF-TND's eighth-session start choice, set with populations a-e in view "
          "(population f is its blind test). "),
    "d": ("It was declared (commit e52cdfb) and trained before the sixth session's DF-TND rule - three starts per "
          "label, T = 2.5 (commit 16cbd90) - was fixed, after every other threshold in use, and nothing was "
          "changed after it was scanned: the blind test of every rule in use in the sixth session (git "
          "9b0952f:benchmarks/results/detectors_d.md). NOT blind for DL-TND's reach rule (seventh session), chosen "
          "with populations a-d in view (population e is its blind test). NOT blind for DF-TND's eighth-session "
          "start choice, set with populations a-e in view (population f is its blind test). "),
    "e": ("It was declared (commit bb80474) and trained before the seventh session's DL-TND reach rule was fixed, "
          "after every other threshold in use, and scanned only after that rule was committed; nothing was changed "
          "after it was scanned: the blind test of every rule in use in the seventh session (git "
          "0d4b91c:benchmarks/results/detectors_e.md). NOT blind for DF-TND's eighth-session start choice, set "
          "with populations a-e in view (population f is its blind test). "),
    "f": ("It was declared (commit 9e5db6f) and trained before the eighth session's DF-TND start choice (each "
          "label reported by its start with the largest margin) was fixed, after every other rule in use, and "
          "scanned only after that change was committed; nothing was changed after it was scanned: a blind test "
          "of every rule in use. "),
}


TITLE = {"b": "re-test, blind except for DF-TND and DL-TND's reach rule",
         "c": "re-test, blind except for DF-TND's sixth- and eighth-session rules and DL-TND's reach rule",
         "d": "re-test, blind except for DL-TND's reach rule and DF-TND's eighth-session rule",
         "e": "re-test, blind except for DF-TND's eighth-session rule", "f": "blind re-test"}


def _population_text(which: str) -> str:
    if which == "a":
        return ""
    return (f"Population {which}: the same ten infected and ten clean members as the evaluation population "
            "(names, triggers, positions, targets), trained with fresh seeds for training, poisoning and blend "
            f"noise (`benchmarks/population.py --population {which}`). " + BLINDNESS[which])


def _calibration_text(calib: dict, t_cal: dict, which: str) -> str:
    if not t_cal:
        return ""
    blind = ("The calibration rule and references were fixed before this population was trained." if which != "a" else
             "The rule (largest reference score) was fixed in an earlier session with 4 references; the 8 more "
             "were trained after the evaluation scores had been seen, so this is not a blind test "
             "(population f is; b-e were before DF-TND's eighth-session rule).")
    n_ref = len(next(iter(calib.values())))
    lines = [f"`(T calibrated)` rows: the detector's threshold T set to the largest score among {n_ref} clean reference "
             "models (`calib-s0..`, the population's recipe with other seeds; never the evaluation models) - what "
             "`backdoorlab scan --reference ...` (`defenses.detect.calibrate`) does, with the same inputs and seed. "
             + blind + " The combined rules use the default detectors."]
    for n, vs in calib.items():
        lines.append(f"- {n}: T = {t_cal[n]:.4f} (preset {vs[0]['threshold']:g}); reference scores "
                     + ", ".join(f"{c['score']:.3f}" for c in vs))
    return "\n".join(lines)


def report(records, names, calib=None, which: str = "a") -> str:
    from backdoorlab._stats import auroc
    from backdoorlab.defenses.detect import DETECTORS
    from backdoorlab.defenses.detect.calibrate import calibrated_threshold
    from backdoorlab.defenses.detect.combined import Combined

    calib = dict(calib or {})
    t_cal = {n: calibrated_threshold([c["score"] for c in vs], 0.0, vs[0]["threshold"],   # = calibrate()
                                     getattr(DETECTORS[n](), "score_floor", None))[0] for n, vs in calib.items()}
    for r in records:
        r["verdicts"] = _verdicts(r, names)
        total = sum(v["seconds"] for v in r["raw"].values())
        r["seconds"] = {n: r["raw"][n]["seconds"] for n in names} | {k: total for k in r["verdicts"] if
                                                                     k.startswith("combined")}
        for n, t in t_cal.items():
            r["verdicts"][f"{n} (T calibrated)"] = _recalibrated(n, r["raw"][n], t)
            r["seconds"][f"{n} (T calibrated)"] = r["seconds"][n]
        dl = r["raw"].get("dl-tnd")
        if dl is not None and "official_similarity" in (dl["evidence"] or {}):
            r["verdicts"][OFFICIAL_DL] = _official_dl(dl)
            r["seconds"][OFFICIAL_DL] = r["seconds"]["dl-tnd"]
        df = r["raw"].get("df-tnd")
        if df is not None and "start_increase" in (df["evidence"] or {}):
            r["verdicts"][PREVIOUS] = _previous_df(df)
            r["seconds"][PREVIOUS] = r["seconds"]["df-tnd"]
    cols = [k for k in records[0]["verdicts"] if all(k in r["verdicts"] for r in records)]   # rows every model has
    inf = [r for r in records if r["infected"]]
    cln = [r for r in records if not r["infected"]]
    rows, stats = [], {}
    for n in cols:
        det = sum(r["verdicts"][n].backdoored for r in inf)
        tgt = sum(r["verdicts"][n].backdoored and r["target"] in r["verdicts"][n].suspects[:1] for r in inf)
        fp = sum(r["verdicts"][n].backdoored for r in cln)
        au = auroc(torch.tensor([r["verdicts"][n].score for r in records]),
                   torch.tensor([r["infected"] for r in records]))
        sec = sum(r["seconds"][n] for r in records) / len(records)
        stats[n] = (det, fp, tgt)
        rows.append([n, f"{det}/{len(inf)} ({100 * det / len(inf):.0f}%)", f"{fp}/{len(cln)}",
                     f"{tgt}/{len(inf)}", f"{au:.3f}", f"{sec:.1f}"])
    per = [[r["name"], f"{100 * r['ca']:.2f}", "-" if r["asr"] is None else f"{100 * r['asr']:.2f}",
            *[("**B**" if r["verdicts"][n].backdoored else "c") + (f" {list(r['verdicts'][n].suspects)}"
              if r["verdicts"][n].suspects else "") + f" ({r['verdicts'][n].score:.2f})" for n in cols]]
           for r in records]
    # acceptance: DL-TND / DF-TND >= 80% detected with <= 2 clean flagged; combined >= best single
    accept = []
    for n in ("dl-tnd", "df-tnd", *(f"{n} (T calibrated)" for n in t_cal)):
        if n in stats:
            det, fp, _ = stats[n]
            ok = det >= 0.8 * len(inf) and fp <= 2
            seen = ((n.startswith("df-tnd") and which != "f") or (n.startswith("dl-tnd") and which not in ("e", "f"))
                    or (which == "a" and "calibrated" in n))
            accept.append(f"- {n}: {det}/{len(inf)} detected, {fp}/{len(cln)} clean flagged -> "
                          f"**{'met' if ok else 'not met'}**" + (" (not blind: a rule it uses was set after this "
                                                                 "population's results were seen)" if seen else ""))
    singles = list(names)
    best = max(singles, key=lambda n: (stats[n][0] - stats[n][1], stats[n][2]))
    cd, cf, ct = stats["combined"]
    bd, bf, bt = stats[best]
    ok = cd >= bd and cf <= bf
    accept.append(f"- combined (rule `{Combined.rule}`): {cd} detected / {cf} FP / {ct} right target vs best single "
                  f"detector {best} (by detected minus FP): {bd} / {bf} / {bt} -> at least as good on both "
                  f"counts: **{'yes' if ok else 'no'}**")
    return "\n\n".join(part for part in [
        "## Detection population: Neural Cleanse vs DL-TND vs DF-TND (MNIST)" if which == "a" else
        f"## Detection population {which} (fresh seeds, {TITLE[which]}): " + " vs ".join(names) + " (MNIST)",
        _population_text(which) + f"{len(inf)} infected + {len(cln)} clean MNIST badnets-cnn models from `benchmarks/population.py` "
        f"({EPOCHS} epoch(s) on the full 60,000-image training split, 2 more per retry; every clean model CA >= 98%, "
        "every infected one ASR >= 90% on "
        "the test set, columns below). Library defaults, inputs as `backdoorlab scan --seed 0` gives them: "
        "NC a 5% clean training subset (3,000 images); DL-TND one clean image per class; DF-TND no data. "
        + ({"f": "No rule or threshold was tuned on this population. ",
            "e": "DF-TND's eighth-session start choice was chosen with this population's results in view; no "
                 "threshold was tuned on it. ",
            "d": "DL-TND's reach rule (seventh session) and DF-TND's start choice (eighth) were chosen with this "
                 "population's results in view; no threshold was tuned on it. ",
            "a": "DF-TND's rules and DL-TND's reach rule were set with this population's results in view (see the "
                 "acceptance notes); NC uses its paper's rule. ",
            "b": "DF-TND's T_eff (fifth session), its three starts and T = 2.5 (sixth), DL-TND's reach rule "
                 "(seventh) and DF-TND's start choice (eighth) were chosen with this population's results in view; "
                 "no other threshold was tuned on it. "}.get(which,
           "DF-TND's three starts and T = 2.5 (sixth session), DL-TND's reach rule (seventh) and DF-TND's start "
           "choice (eighth) were chosen with this population's results in view; no other threshold was tuned on "
           "it. ")) + "Target accuracy = infected models whose top suspect is the "
        "true target. Seconds per model: one thread, the 2-core CPU shared with other developers' jobs "
        "(indicative only); combined = sum of the three.",
        "Combined rules (`defenses/detect/combined.py`): `combined` = the default rule "
        f"`{Combined.rule}`; the others are shown for comparison only (not used to pick the default): "
        "lead = the data-richest detector decides (NC here); agree = at least 2 detectors name the same "
        "label; vote = at least 2 of 3 flag; any / all.",
        md_table(["detector", "detection rate", "false positives", "target accuracy", "AUROC", "s / model"], rows),
        _calibration_text(calib, t_cal, which),
        (f"`{PREVIOUS}`: DF-TND's previous rule (three starts per label, each label reported by the start with the "
         "largest eq. 6 objective, T = 2.5) read from the evidence of the same runs - the sixth session's verdicts "
         "- shown for comparison only. Population d was that rule's blind test (e too); f is blind for both. (The "
         "fifth session's one-start row shown before is in git history, 0d4b91c:benchmarks/results/.)"
         if PREVIOUS in cols else ""),
        "### Acceptance (issue 7)\n\n" + "\n".join(accept) + (
            "\n\nNot blind here: DF-TND's margin rule (T_abs) was added, and the 8 extra references for the calibrated "
            "T were trained, after this population's results had been seen; so was DF-TND's margin-per-mask-pixel "
            "criterion (T_eff, after population b), DF-TND's three starts and T = 2.5 were chosen on populations "
            "a, b and c, DL-TND's reach rule on a, b, c and d, and DF-TND's start choice (eighth session) on a-e. "
            "Population f (same members, fresh seeds, `results/detectors_f.md`) is the blind test of every rule "
            "in use." if which == "a" else ""),
        "### Where DL-TND and DF-TND fail (from the cached evidence)\n\n" + _failures(inf, cln, t_cal.get("dl-tnd"), calib.get("dl-tnd", ())),
        "Paper (Wang et al., ECCV 2020) reports DL-TND / DF-TND on CIFAR-10, GTSRB and ImageNet, not MNIST; "
        "its per-model numbers were not retrieved (see ../shared/notes/performance-anchors.md (h)).",
        "### Per model (verdict [suspects] (score))",
        md_table(["model", "CA %", "ASR %", *cols], per),
    ] if part)


if __name__ == "__main__":
    sys.exit(main())
