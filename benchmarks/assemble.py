"""Assemble BENCHMARKS.md from benchmarks/results/*.md (each written by its benchmark script).

    python benchmarks/assemble.py
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["badnets_mnist", "neural_cleanse", "detectors", "repair", "strip", "anomaly", "purify", "sanitize",
         "trojannn", "poison_frogs", "blend", "verify", "certify", "grid", "serve"]

HEADER = """# Benchmarks

Every number below was measured by the script named in its section, on the machine it names, and
pasted here by `python benchmarks/assemble.py` from `benchmarks/results/`. Paper numbers stand
beside ours; where we do not reach them, the section says so and what we think is missing.
Timings are ratios measured side by side in one run; several developers shared the 2-core machine
while these ran (the load average at the end of each run is printed), so absolute seconds are
pessimistic.

### Where we stand against the papers (summary of the sections below)

| method | our measurement | paper / target | met? |
|---|---|---|---|
| BadNets MNIST (pixel / pattern / all-to-all) | CA 99.23%; ASR 99.94 / 99.93%; all-to-all backdoor acc. 98.45%; 5.9-9.4k train img/s | CA ≈ 99.5%, ASR ≥ 99.9%, a2a ≈ 99.4% | yes, a2a 1 pt below the paper |
| Neural Cleanse MNIST | flags target 0 (index 5.18), twin clean (1.03); unlearning 98.84 / 0.22; clean-only patching leaves 99.48% ASR; full scan 47.4 s with 2 starts per label (bf16 autocast 16.6 s, 120 GFLOP/s) | 97.69 / 0.57; scan ≤ 90 s | yes |
| Neural Cleanse GTSRB subset (gtsrb-cnn, 4x4 square -> 33) | before 94.85 / 94.27; patched w/ reversed trigger 91.95 / 0.19, original 86.96 / 0.00, clean only 93.18 / 89.64; flags 33 (index 3.14), but also flags the clean twin (label 12, index 2.47); filter FNR 2.62% at FPR 5% (1 start, bf16) | 96.51 / 97.40 -> 92.91 / 0.14, 90.06 / 0.19, 92.02 / 95.69 | table's pattern yes (CA 1-3 pt below, on a 13k-image subset); twin FP no |
| Neural Cleanse batched vs one label at a time (equal budget) | 2 starts per label (default): 0.84x float32, 1.64x bf16 (quiet CPU, same run); 1 start: 1.40x / 1.96x (1 thread, shared CPU) | ≥ 3x | no: one label's step already keeps the CPU kernels busy; the profile bounds fp32 at 1.18x (kernel-rate table, step profile) |
| Neural Cleanse detection population (10 infected, 10 clean MNIST) | 10/10 flagged with the right target, 0/10 FP, AUROC 1.000 (2 random starts per label, official numpy median); one start or torch's lower median: 9/10. Blind re-tests on populations b, c, d, e and f (same members, fresh seeds): 10/10 right target, 0/10 FP on each | all flagged with the right target, ≤ 1 FP | yes, also blind five times (the median switch was made after seeing population a) |
| DL-TND / DF-TND (population a; re-tests b-e; blind re-test f) | DL-TND (official-code λ search, 1 image per class, T = 0.75) with the session-7 reach rule (an image's cosine counts only when both perturbations send it to the label; chosen with a-d in view, blind on e and f): a 9/10 detected, 1/10 FP; b 9/10, 0/10; c 9/10, 0/10; d 8/10, 1/10; e 10/10, 0/10; blind f 9/10, 0/10 (the official plain-cosine rule, same runs: a 9/10, 5/10; b 9/10, 4/10; c 9/10, 2/10; d 9/10, 2/10; e 10/10, 4/10; f 9/10, 2/10). T calibrated on 12 clean references (`scan --reference`, T = 0.806): a 9/10, 1/10; b 9/10, 0/10; c 8/10, 0/10; d 7/10, 0/10; e 9/10, 0/10; f 9/10, 0/10. DF-TND (no data), three starts per label, each label reported by its start with the largest margin, T = 2.5 (session 8, chosen with a-e in view): a 10/10, 0/10; b 9/10, 0/10; c 8/10, 0/10; d 9/10, 1/10; e 8/10, 2/10; blind f 9/10, 1/10 (session-6 rule, start with the largest eq. 6 objective, same runs: a 10/10, 3/10; b 9/10, 0/10; c 8/10, 0/10; d 9/10, 2/10; e 8/10, 2/10; f 10/10, 1/10). DF-TND T calibrated (T = 1.878): a 10/10, 2/10; b 9/10, 1/10; c 9/10, 2/10; d 10/10, 3/10; e 9/10, 3/10; f 10/10, 2/10. Combined (`lead`) 10/10, 0 FP on a-f. GTSRB spot check (1 infected, 1 clean; DF-TND only): see its section - the MNIST presets do not carry over | ≥ 80%, ≤ 2 FP; combined ≥ best single | combined yes on all six; DL-TND at its preset yes on all six (blind f: 9/10, 0 FP); DF-TND at its preset yes on all six (blind f: 9/10, 1 FP; 2 FP, the limit, on e); calibrated T: DL-TND no on d (7/10), DF-TND no on d and e (3 FP) |
| NAD / I-BAU / Fine-Pruning MNIST pattern (5% clean) | 97.84/0.21, 98.52/0.19, 98.70/3.97; over 5 clean draws ASR ≤ 0.72% for both, CA budget held on 2/5 (NAD) and 4/5 (I-BAU); I-BAU 100 samples 97.30/0.62; NAD vs I-BAU alternated 5x: median 15.6 vs 12.6 CPU s (I-BAU cheaper in 5 of 5) | ASR ≤ 2 / 2 / 10%, CA drop ≤ 1.5 / 1.5 / 2 pt; I-BAU cheaper than NAD | yes on the table's draw (CA budget not on every draw); I-BAU 0.81x NAD's time, not the paper's 13x |
| STRIP | MNIST FAR 0.00% at FRR 1%; CIFAR-10 on the authors' recipe (augmented, 1.2% poison): checkerboard FAR 0.00% at FRR 1% (CA 69.3%), their trigger c 0.40% (1.10% at a realised test FRR of 1%); our earlier 10%-poison victims 0.3-22.1%; GTSRB 14.5% | 1.85%; 0% | MNIST, CIFAR-10 yes (CA below the paper's 87%); GTSRB no |
| Februus (MNIST patch) | ASR 0.35% at CA −0.45 pt | ASR ≤ 10%, CA drop ≤ 3 pt | yes |
| Spectral sig. / activation clustering (MNIST 10%) | SS (majority-poison option) recall 99.4%, ASR 0.22%; paper rule 76%; AC recall 99.7%, ASR 0.17%; GTSRB: no sanitizer removes the poison | ≥ 90%, ASR ≤ 2% | MNIST yes (SS with the option); GTSRB no |
| Anomaly-detection filter (Neural Trojans) | MNIST AUROC 0.997; GTSRB 0.50 | — | MNIST only |
| Trojaning attack / Poison Frogs / Blend | Orig+Tri 92.7% (−1.5 pt); one-shot 50/50; ASR 99.99% (+0.15 pt) | ≥ 90%; ≥ 80%; ≥ 95% | yes |
| Backdoor-freeness verification | clean nets 15/15 verified, BadNets 15/15 falsified (\|X\| = 100) | — | yes |
| Randomized smoothing MNIST (n = 1,000) | σ 0.25: 96.5/94.0/85.0/0.0%, σ 0.5: 93.5/91.5/85.0/57.5% at r 0/0.25/0.5/1; 0% certified against 3x3 / 5x5 patches | — (no MNIST figure) | reported |
| Randomized smoothing CIFAR-10 subset (small CNN, n = 1,000) | σ 0.25: 49.5/38.5/26.5/0.0%, σ 0.5: 43.5/35.5/25.0/13.5% at r 0/0.25/0.5/1; ≤ 3% certified against 3x3 / 5x5 / 10x10 white patches, 0% against any patch | Cohen (ResNet-110, n = 100k) σ 0.25: 60/43/0% at r 0.25/0.5/1 | below Cohen (weaker model, smaller n); reported |
| Certified kNN MNIST, 500 poisons | 45.8% on pixels (88.4% on features learned from other clean data) | about 70% | no on pixels; explained |
| DPA MNIST, 1,200 partitions | 19.2% certified at > 500 insertions (small CNN members); members together vs one after another 5.8x with 2 threads (3.5x with 1), same votes | ≥ 50%; ≥ 5x | speed yes (2 threads); certified fraction no |
| Sphere/slab MNIST-1-7 | attack objective ≤ U* at every ε; U* 0.022 → 0.046 (ε 0 → 0.3) | resilient | yes |
| One grid (NC, repair, STRIP tables) | `benchmarks/grids/mnist_core.toml`, 34 cells, one seed per attack: all three tables reproduced | — | yes |
"""


def key(p: Path) -> tuple[int, str]:
    for i, prefix in enumerate(ORDER):
        if p.stem.startswith(prefix):
            return (i, p.stem)
    return (len(ORDER), p.stem)


def main() -> None:
    parts = [HEADER]
    for p in sorted((ROOT / "benchmarks" / "results").glob("*.md"), key=key):
        text = p.read_text().strip()
        if text.startswith("# "):  # a file with its own top-level title: shift every heading down one level
            text = "\n".join("#" + ln if ln.startswith("#") else ln for ln in text.splitlines())
        elif not text.lstrip("_").startswith("#") and "\n## " in text:
            head, _, rest = text.partition("\n## ")
            text = "## " + rest + "\n\n" + head
        parts.append(text + f"\n\n<sub>source: `benchmarks/results/{p.name}`</sub>\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
