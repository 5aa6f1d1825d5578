"""Neural Cleanse detection over the MNIST detection population (issue 3): 10 BadNets-infected models
with different targets, trigger kinds (single pixel, BadNets pattern, 3x3-5x5 squares, blend) and
positions, and 10 clean models differing only by seed (``benchmarks/population.py``, the single
builder; every member passed CA >= 98% and, if infected, ASR >= 90% on the MNIST test set).

Neural Cleanse runs with the library defaults, exactly what ``backdoorlab scan MODEL --seed 0`` runs
(5% clean training subset, ``NeuralCleanse()``); verdicts are cached per model in
``runs/population/NAME.verdicts.json`` (shared with ``detectors.py``), so a run resumes.

Reports the detection rate (flagged with the correct target), false positives, target-label
accuracy, AUROC of the max anomaly index, and the reversed vs true trigger L1.

    OMP_NUM_THREADS=1 python benchmarks/neural_cleanse_detection.py [--shard 0/2] [--no-write]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import SHARED_DATA, load_avg, md_table, write_result  # noqa: E402
from population import CACHE, EPOCHS, cached_verdict, population  # noqa: E402


def true_l1(goal) -> float:
    trig = goal.trigger
    if hasattr(trig, "l1"):
        return trig.l1()
    return float(trig.alpha) * trig.pattern.shape[-2] * trig.pattern.shape[-1]   # blend: alpha over the image


def main() -> None:
    from backdoorlab._stats import auroc
    from backdoorlab.data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shard", default="0/1", help="I/N: scan members i with i %% N == I (no report unless 0/1)")
    ap.add_argument("--no-write", action="store_true", help="print the table, do not write the results file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shard = tuple(int(v) for v in a.shard.split("/"))
    train = load_dataset("mnist", "train", SHARED_DATA)
    members = population(shard=shard, train_missing=False)
    rows, recs = [], []
    for m in members:
        v = cached_verdict(m, "neural-cleanse", train)
        if v is None:
            shard = None     # another process is scanning it: no report from this one
            continue
        ev = v["evidence"]
        rev = ev["l1_norms"][ev["labels"].index(m.target)] if m.infected else None
        tl1 = true_l1(m.goal) if m.infected else None
        top = v["suspects"][0] if v["suspects"] else None
        recs.append((m, v, rev, tl1, top))
        rows.append([m.name, m.kind, "-" if m.target is None else m.target, f"{100 * m.ca:.2f}",
                     "-" if m.asr is None else f"{100 * m.asr:.2f}", m.attempts, "**yes**" if v["backdoored"] else "no",
                     ",".join(map(str, v["suspects"])) or "-", f"{v['score']:.2f}",
                     "-" if rev is None else f"{rev:.1f}", "-" if tl1 is None else f"{tl1:.1f}",
                     f"{min(ev['l1_norms']):.1f} / {ev['median']:.1f}", f"{v['seconds']:.0f}"])
    if shard != (0, 1):
        return
    inf = [r for r in recs if r[0].infected]
    cln = [r for r in recs if not r[0].infected]
    flagged_inf = sum(r[1]["backdoored"] for r in inf)
    correct = sum(r[1]["backdoored"] and r[4] == r[0].target for r in inf)
    fps = sum(r[1]["backdoored"] for r in cln)
    au = auroc(torch.tensor([r[1]["score"] for r in recs]), torch.tensor([r[0].infected for r in recs]))
    ratios = torch.tensor([r[2] / r[3] for r in inf])
    patch = [r for r in inf if r[0].kind != "blend"]
    patch_ok = sum(r[1]["backdoored"] and r[4] == r[0].target for r in patch)
    secs = [r[1]["seconds"] for r in recs]
    missed = [r[0].name for r in inf if not (r[1]["backdoored"] and r[4] == r[0].target)]
    flagged_clean = [r[0].name for r in cln if r[1]["backdoored"]]
    accept = correct == len(inf) and fps <= 1
    notes = "\n".join(
        f"- {m.name} ({m.kind}, target {m.target}, test ASR {100 * m.asr:.1f}%): "
        + (f"flagged {v['suspects']} instead" if v["backdoored"] else "not flagged")
        + f"; the reversed trigger for the true target has L1 {rev:.1f} (true trigger {tl1:.1f}, median over labels "
        f"{v['evidence']['median']:.1f}), anomaly index {v['evidence']['anomaly_index'][m.target]:.2f}."
        for m, v, rev, tl1, top in inf if not (v["backdoored"] and top == m.target))
    body = f"""## Neural Cleanse detection over the MNIST model population (issue 3)

{len(inf)} BadNets-infected and {len(cln)} clean MNIST models (`benchmarks/population.py`: badnets-cnn,
{EPOCHS} epoch(s) on the full 60,000-image training split (2 more per retry, see attempts), poisoning rate 10%; every clean model has test CA
>= 98%, every infected one test ASR >= 90%, see the CA / ASR columns). Neural Cleanse with the library
defaults (`NeuralCleanse()`, what `backdoorlab scan MODEL --seed 0` runs): batched over the 10 labels,
official lambda schedule and early stopping, on a clean set of 3,000 training images (the scan's 5%
default). No setting was tuned on this population. Other developers' jobs shared the 2 CPU cores
(load average at the end: {load_avg()}, 15-25 during the run), so seconds are upper bounds; one thread
per scan, up to six scans at once. Building notes (`benchmarks/population.py`): single pixels sit 3 px in
from the corner (1 px in, the BadNets default, did not implant in one epoch: ASR 1.0%); patch3-center-t7
failed the bar at 1 epoch (CA 97.63%, ASR 79.9%) and passed on its retry (3 epochs, seed 1107).

| measure | value |
|---|---|
| detection rate (infected flagged with the correct target first) | {correct}/{len(inf)} |
| ... of them patch triggers (pixel, pattern, squares) | {patch_ok}/{len(patch)} |
| infected flagged at all | {flagged_inf}/{len(inf)} |
| false positives (clean models flagged) | {fps}/{len(cln)} |
| target-label accuracy (top suspect == true target, over flagged infected) | {correct}/{flagged_inf} |
| AUROC of the max anomaly index (infected vs clean) | {au:.3f} |
| reversed / true trigger L1 at the true target (median over infected; over patch triggers) | {float(ratios.median()):.2f}; {float(torch.tensor([r[2] / r[3] for r in patch]).median()):.2f} |
| mean scan time | {sum(secs) / len(secs):.0f} s |

Acceptance (every infected model flagged with the correct target; at most 1 clean model flagged):
**{"met" if accept else "not met"}** - missed or wrong target: {", ".join(missed) or "none"}; clean flagged:
{", ".join(flagged_clean) or "none"}.

{notes}

{md_table(["model", "trigger", "target", "CA %", "ASR %", "attempts", "flagged", "suspects", "anomaly index",
           "reversed L1 (target)", "true L1", "min / median L1", "s"], rows)}

"True L1" is the trigger mask's L1 (pixels); for a blend trigger it is alpha x 784, the L1 of the
equivalent full-image mask. Paper (Wang et al., S&P 2019): every infected model has anomaly index
> 2 (> 3 on its six tasks), clean models < 2; the reversed trigger is smaller than the original
(MNIST: L1 12.00 vs 16). Verdicts and evidence per model: `{CACHE.relative_to(CACHE.parents[1])}/NAME.verdicts.json`.
"""
    if not a.no_write:
        print(write_result("neural_cleanse_detection", body))
    print(body)


if __name__ == "__main__":
    main()
