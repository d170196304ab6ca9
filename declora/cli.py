"""`declora` and its subcommands.

Each subcommand has an `_add_<name>(sub)` that declares its flags and a `_run_<name>(args)` that does the work,
importing what it needs lazily so that `declora --help` stays fast. A `CliError` (or a ValueError/OSError from
reading the user's input) ends the command with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys


class CliError(Exception):
    """A user error: bad flag, bad spec, missing file. Printed as one line, exit status 2."""


# ---- topology --------------------------------------------------------------------------------------------------
def _add_topology(sub) -> None:
    p = sub.add_parser("topology", help="show and check a topology (graph, mixing weights, spectral gap)")
    p.set_defaults(func=lambda a: p.print_help() or 0)


# ---- keys --------------------------------------------------------------------------------------------------------
def _add_keys(sub) -> None:
    pass


# ---- simulate / peer / launch-node / server ---------------------------------------------------------------------------
def _add_run_commands(sub) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="declora", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_topology(sub)
    _add_keys(sub)
    _add_run_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"declora {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
