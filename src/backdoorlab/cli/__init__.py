"""The ``backdoorlab`` command line: parse -> build from registry -> call the verb -> save -> render.

Each module of this package (except ``_*``) defines ``register(sub, groups)`` adding its
sub-commands to ``sub`` or to one of the method groups in ``groups`` (``attack``, ``repair``,
``filter``, ``purify``, ``certify``), each with ``set_defaults(func=handler)``;
``handler(args) -> int`` returns the exit code.  For a group, ``backdoorlab repair MODEL --method
nad`` is accepted as a spelling of ``backdoorlab repair nad MODEL``.  User errors (ValueError, TypeError, missing or corrupt files) become one line on stderr and
exit code 2, never a traceback (``--debug`` shows it).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="backdoorlab", description="Attack, audit, repair and certify neural networks against backdoors.")
    parser.add_argument("--version", action="version", version=f"backdoorlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, help_ in GROUPS.items():
        gp = sub.add_parser(name, help=help_, description=help_)
        groups[name] = gp.add_subparsers(dest="method", metavar="METHOD")
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"{__name__}.{mod}").register(sub, groups)
    return parser


GROUPS = {
    "attack": "run an attack and write the backdoored model plus its ground-truth file",
    "repair": "repair a model with a mitigation method and write the new model",
    "filter": "evaluate an inference-time input filter (FRR / FAR / AUROC)",
    "purify": "evaluate an input purifier (CA / ASR after purification)",
    "certify": "certified defenses against poisoning",
}


def _method_to_subcommand(argv: list[str]) -> list[str]:
    """``GROUP ... --method M ...`` -> ``GROUP M ...``."""
    if not argv or argv[0] not in GROUPS:
        return argv
    rest = list(argv[1:])
    for i, a in enumerate(rest):
        if a == "--method" and i + 1 < len(rest):
            m = rest[i + 1]
            del rest[i:i + 2]
            return [argv[0], m, *rest]
        if a.startswith("--method="):
            del rest[i]
            return [argv[0], a.split("=", 1)[1], *rest]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    i = 1 if argv[:1] == ["--debug"] else 0
    argv = argv[:i] + _method_to_subcommand(argv[i:])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from ..data import DataError
    from ..io import ModelFileError

    try:
        if getattr(args, "save_run", None):
            from ._common import run_with_saving

            return run_with_saving(args, argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("backdoorlab: interrupted\n")
        return 130
    except (ValueError, TypeError, FileNotFoundError, ModelFileError, DataError, ImportError) as e:
        if args.debug:
            raise
        sys.stderr.write(f"backdoorlab {args.command}: error: {e}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
