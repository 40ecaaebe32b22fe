"""Instructions per batch in the Pipeline's handler path, counted by callgrind (deterministic).

Usage (root; valgrind installed): ``python benches/callgrind_handler.py [--batches N]
[--handler empty|verdicts|headers|sockperf]``. A veth pair; a Pipeline with ``batch=1`` runs
under ``valgrind --tool=callgrind`` in namespace ``b``, collecting only inside
``<PyHandler as BatchHandler>::handle`` (the GIL taken, the columns filled, the ``Batch`` made,
the Python call, the verdicts read back, the escape check, the GIL released); this process sends
it N sockperf-shaped UDP requests one at a time from namespace ``a``. Prints the instructions per
batch. Not a pytest file: valgrind makes it take a minute.

``perf stat -e instructions`` would do the same with less ceremony where the machine exposes
hardware counters; this VM does not.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kbypass.pingpong import SOCKPERF_PORT, request, sockperf_echo

TOGGLE = "*PyHandler as kbypass_core::engine::worker::BatchHandler>::handle"


def child(ifname: str, n: int, which: str) -> None:
    import kbypass

    def empty(b: kbypass.Batch) -> None:
        return None

    def verdicts(b: kbypass.Batch) -> None:
        b.verdicts[:] = kbypass.DROP

    def headers(b: kbypass.Batch) -> None:
        b.headers["dst_port"]
        b.verdicts[:] = kbypass.DROP

    handler = {"empty": empty, "verdicts": verdicts, "headers": headers}.get(which, sockperf_echo)
    p = kbypass.Pipeline(ifname, handler, batch=1, cpus=False, progress=False, mode="copy",
                         filter=f"udp dst port {SOCKPERF_PORT}")  # fmt: skip
    p.start(packets=n)
    print("ready", flush=True)
    p.wait()
    w = p.stats()[0]
    print(f"batches={w['batches']} errors={w['handler_errors']}", flush=True)
    p.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--handler", choices=["empty", "verdicts", "headers", "sockperf"],
                    default="empty")  # fmt: skip
    keep = "keep callgrind's output there (for callgrind_annotate --inclusive=yes FILE)"
    ap.add_argument("--keep", metavar="FILE", help=keep)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return 0
    if os.geteuid() != 0 or shutil.which("valgrind") is None:
        print("needs root and valgrind (apt-get install valgrind)", file=sys.stderr)
        return 1
    from kbypass.testing import VethPair

    n = args.batches
    with VethPair() as pair, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = ["ip", "netns", "exec", pair.b.netns, "valgrind", "--tool=callgrind",
               f"--callgrind-out-file={out}", f"--toggle-collect={TOGGLE}", sys.executable,
               __file__, "--child", pair.b.ifname, str(n), args.handler]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            print(proc.communicate()[1][-2000:], file=sys.stderr)
            return 1
        time.sleep(1.0)
        with pair.enter("a"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((pair.a.ip, 0))
        for i in range(n):  # one at a time: every batch has one frame
            s.sendto(request(64, seq=i), (pair.b.ip, SOCKPERF_PORT))
            time.sleep(0.004)
        o, e = proc.communicate(timeout=600)
        if proc.returncode != 0:
            print(e[-2000:], file=sys.stderr)
            return 1
        batches = int(re.search(r"batches=(\d+)", o).group(1))  # type: ignore[union-attr]
        m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), flags=re.M)
        assert m is not None, "callgrind wrote no totals"
        total = int(m.group(1))
        print(f"handler={args.handler} batches={batches} instructions={total} "
              f"per_batch={total / batches:.0f}")  # fmt: skip
        if args.keep:
            shutil.copyfile(out, args.keep)  # for callgrind_annotate --inclusive=yes
    return 0


if __name__ == "__main__":
    sys.exit(main())
