"""The ``kbypass`` command line: ``kbypass info``, ``kbypass capture`` (and others).

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


def _capture_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("iface", help="interface to capture on")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--queue", type=int, default=None, metavar="Q", help="RX queue (default 0)")
    q.add_argument(
        "--queues", choices=["all"], default=None, help="every RX queue of the interface"
    )
    p.add_argument(
        "--filter",
        "-f",
        metavar="RULES",
        help="capture only matching frames, e.g. 'udp dst port 9000' (the rest stay with the "
        "kernel); see kbypass.xdp for the syntax",
    )
    p.add_argument("-c", "--count", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument(
        "-w",
        "--write",
        metavar="FILE",
        help="write a pcap file (nanosecond timestamps; '-' for stdout) instead of printing "
        "one line per frame",
    )
    p.add_argument("--snaplen", "-s", type=int, default=0, metavar="N", help="bytes per frame")
    p.add_argument(
        "--mode",
        choices=["copy", "zerocopy", "auto"],
        default="auto",
        help="AF_XDP binding (veth has copy only)",
    )
    p.add_argument(
        "--xdp-mode", choices=["auto", "native", "generic"], default="auto", help="XDP attach"
    )
    p.add_argument(
        "--frames",
        type=int,
        default=4096,
        metavar="N",
        help="UMEM frames (default 4096); up to half wait on the receive rings, so more frames "
        "mean fewer drops when the loop falls behind",
    )
    p.add_argument("--netns", metavar="NAME", help="capture inside this network namespace")
    p.add_argument("--force", action="store_true", help="replace a foreign XDP program")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (to stderr)")


def _capture_run(args: argparse.Namespace) -> int:
    import json
    import signal

    from kbypass import capture

    def terminate(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM stops like Ctrl-C: the file is flushed and the program detached.
    signal.signal(signal.SIGTERM, terminate)
    where = f" in netns {args.netns}" if args.netns else ""
    queues = "all queues" if args.queues else f"queue {args.queue or 0}"
    target = f", writing {args.write}" if args.write else ""
    print(
        f"kbypass capture: {args.iface} {queues}{where}, filter {args.filter or 'all'!r}"
        f"{target}; Ctrl-C to stop",
        file=sys.stderr,
    )
    try:
        s = capture(
            args.iface,
            queue=args.queue,
            queues=args.queues,
            filter=args.filter,
            count=args.count,
            duration=args.duration,
            write=args.write,
            snaplen=args.snaplen,
            mode=args.mode,
            xdp_mode=args.xdp_mode,
            netns=args.netns,
            frames=args.frames,
            force=args.force,
            interrupt="stop",
        )
    except BrokenPipeError:
        return 0
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        print(f"kbypass capture: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(s, indent=2), file=sys.stderr)
    else:
        print(
            f"{s['packets']} packets captured ({s['bytes']} bytes) in {s['elapsed']:.3f} s, "
            f"{s['pps']:,.0f} packets/s; {s['kernel_dropped']} dropped by the kernel; "
            f"stopped by {s['stopped']} ({s['xdp_mode']} XDP, {s['mode']} mode, queues "
            f"{','.join(map(str, s['queues']))})",
            file=sys.stderr,
        )
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    from kbypass import demo

    demo.add_arguments(p)


def _demo_run(args: argparse.Namespace) -> int:
    from kbypass import demo

    return demo.run(args)


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    from kbypass import bench

    bench.add_arguments(p)


def _bench_run(args: argparse.Namespace) -> int:
    from kbypass import bench

    return bench.run(args)


COMMANDS: dict[str, Command] = {
    "info": Command(
        "show what this machine can do, and how to fix what it can't", _info_arguments, _info_run
    ),
    "capture": Command(
        "capture frames with AF_XDP into a pcap file (a Rust loop, no Python per packet)",
        _capture_arguments,
        _capture_run,
    ),
    "bench": Command(
        "processor throughput by batch size vs the kernel's UDP socket, or (--latency) UDP "
        "request/response latency vs the kernel's UDP server (--plot out.png)",
        _bench_arguments,
        _bench_run,
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
