"""Every `backdoorlab` command line shown in the README parses (so the docs cannot drift)."""
import re
import shlex
from pathlib import Path

import pytest

from backdoorlab.cli import _method_to_subcommand, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands():
    out = []
    for line in README.read_text().splitlines():
        line = line.split("  #")[0].strip()
        for part in re.split(r"\s*&&\s*", line):
            if part.startswith("$B ") or part.startswith(".venv/bin/backdoorlab "):
                out.append(shlex.split(part)[1:])
    return out


@pytest.mark.parametrize("argv", _commands(), ids=lambda a: " ".join(a[:2]))
def test_readme_command_parses(argv):
    args = build_parser().parse_args(_method_to_subcommand(argv))
    assert callable(args.func)


def test_readme_has_commands():
    assert len(_commands()) >= 15
