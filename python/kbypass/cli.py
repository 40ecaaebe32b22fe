"""The ``kbypass`` command line: ``kbypass info`` (and later ``demo``, ``bench``, ``capture``).

Each subcommand is one entry in :data:`COMMANDS`: a function adding its arguments to an
argparse subparser and a function running it. Heavy imports happen inside the run functions,
so ``kbypass --help`` stays fast.

Example::

    $ kbypass info --json | python -m json.tool
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "main"]


@dataclass(frozen=True)
class Command:
    """One subcommand: help text, how to add its arguments, and how to run it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument(
        "--section",
        action="append",
        metavar="NAME",
        help="only this section (repeatable): kernel, privileges, af_xdp, bpf, hugepages, "
        "thp, cpus, interfaces, rdma",
    )


def _info_run(args: argparse.Namespace) -> int:
    import json

    from kbypass import info

    try:
        report = info.collect(args.section)
    except ValueError as e:
        print(f"kbypass info: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else info.render_text(report))
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    from kbypass import demo

    demo.add_arguments(p)


def _demo_run(args: argparse.Namespace) -> int:
    from kbypass import demo

    return demo.run(args)


COMMANDS: dict[str, Command] = {
    "info": Command(
        "show what this machine can do, and how to fix what it can't", _info_arguments, _info_run
    ),
    "demo": Command(
        "a Python packet processor on AF_XDP vs the kernel's UDP socket, on a veth bench",
        _demo_arguments,
        _demo_run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the argparse parser: one subparser per entry of :data:`COMMANDS`."""
    from kbypass import __version__

    parser = argparse.ArgumentParser(
        prog="kbypass", description="Kernel-bypass networking for Python, with a Rust core."
    )
    parser.add_argument("--version", action="version", version=f"kbypass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kbypass`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
