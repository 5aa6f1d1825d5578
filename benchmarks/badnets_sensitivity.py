"""Exercise 1 of seed 000: trigger sensitivity (ASR vs patch size and shift) on MNIST and digits.

Uses the MNIST BadNets pattern / single-pixel models cached by benchmarks/badnets_mnist.py and the
digits demo model (runs/demo/badnets.safetensors, written by `backdoorlab demo`).

    python benchmarks/badnets_sensitivity.py
"""
from __future__ import annotations

import contextlib
import io
import json

from _util import CACHE, SHARED_DATA, ROOT, md_table, write_result
from backdoorlab.cli import main as cli

RUNS = [("MNIST, BadNets 3x3 pattern -> 0", CACHE / "mnist-badnets-2.safetensors", ["--data-dir", str(SHARED_DATA)]),
        ("MNIST, single pixel -> 0", CACHE / "mnist-badnets-1.safetensors", ["--data-dir", str(SHARED_DATA)]),
        ("digits, 3x3 white square -> 0", ROOT / "runs" / "demo" / "badnets.safetensors", [])]


def main() -> None:
    parts = ["## Trigger sensitivity (exercise 1 of seed 000)\n",
             "`backdoorlab sensitivity MODEL` re-stamps the test set with the trigger resized (patch side,"
             " anchored at its bottom-right corner) or shifted, and measures the ASR of each variant.\n"]
    for title, path, extra in RUNS:
        if not path.exists():
            parts.append(f"### {title}\n\n(model {path} missing: run its producer first)\n")
            continue
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            cli(["sensitivity", str(path), "--json", *extra])
        rows = [[v["kind"], v["variant"], f"{100 * v['attack_success_rate']:.2f}"]
                for v in json.loads(buf.getvalue())["variants"]]
        parts.append(f"### {title}\n\n`backdoorlab sensitivity {path.relative_to(ROOT)} {' '.join(extra)}`\n\n"
                     + md_table(["perturbation", "variant", "ASR %"], rows) + "\n")
        print(title, rows[:3])
    parts.append("Reading: the backdoor is tied to the trigger's position; a shift of one or two pixels "
                 "mostly disables it, while larger patches that still contain the pattern keep firing. "
                 "A single-pixel trigger is the most brittle.")
    print(write_result("badnets_sensitivity", "\n".join(parts)))


if __name__ == "__main__":
    main()
