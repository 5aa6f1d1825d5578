"""Assemble BENCHMARKS.md from benchmarks/results/*.md (each written by its benchmark script).

    python benchmarks/assemble.py
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["badnets_mnist", "neural_cleanse", "detectors", "repair", "strip", "purify", "sanitize",
         "trojannn", "poison_frogs", "blend", "verify", "certify"]

HEADER = """# Benchmarks

Every number below was measured by the script named in its section, on the machine it names, and
pasted here by `python benchmarks/assemble.py` from `benchmarks/results/`. Paper numbers stand
beside ours; where we do not reach them, the section says so and what we think is missing.
Timings are ratios measured side by side in one run; several developers shared the 2-core machine
while these ran (the load average at the end of each run is printed), so absolute seconds are
pessimistic.

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
        if not text.lstrip("_").startswith("#") and "\n## " in text:
            head, _, rest = text.partition("\n## ")
            text = "## " + rest + "\n\n" + head
        parts.append(text + f"\n\n<sub>source: `benchmarks/results/{p.name}`</sub>\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
