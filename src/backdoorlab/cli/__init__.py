"""The ``backdoorlab`` command line: parse -> build from registry -> call the verb -> save -> render.

Each module of this package (except ``_*``) defines ``register(subparsers)`` adding its
sub-commands, each with ``set_defaults(func=handler)``; ``handler(args) -> int`` returns the exit
code.  User errors (ValueError, TypeError, missing or corrupt files) become one line on stderr and
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
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"{__name__}.{mod}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from ..data import DataError
    from ..io import ModelFileError

    try:
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
