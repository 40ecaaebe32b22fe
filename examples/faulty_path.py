"""Faults on a path without netem: loss, duplication and reordering, checked at the receiver.

Numbered UDP datagrams go from namespace ``a`` to ``b`` through a ``FaultyPath`` (a bridge in
a third namespace with kbypass's fault injector on its ports); the receiver counts what is
missing, doubled and late, and compares that with the injector's and middlebox's counters.

    sudo python examples/faulty_path.py --bench
    sudo python examples/faulty_path.py --bench --count 5000 --loss 0.05 --reorder 0.1
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from collections import Counter

from kbypass.testing.faults import FaultyPath

PORT = 4791


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Send numbered datagrams through a FaultyPath.")
    ap.add_argument("--bench", action="store_true", required=True, help="build the namespaces")
    ap.add_argument("--count", type=int, default=2000, help="datagrams to send")
    ap.add_argument("--loss", type=float, default=0.02)
    ap.add_argument("--duplicate", type=float, default=0.02)
    ap.add_argument("--reorder", type=float, default=0.05)
    args = ap.parse_args(argv)

    with FaultyPath(
        loss=args.loss,
        duplicate=args.duplicate,
        reorder=args.reorder,
        filter=f"udp dst port {PORT}",
        directions="a>b",
    ) as path:
        with path.enter("b"):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: keep every one
            rx.bind((path.b.ip, PORT))
        with path.enter("a"):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rx, tx:
            for seq in range(args.count):
                tx.sendto(struct.pack("!I", seq) + bytes(60), (path.b.ip, PORT))
                if seq % 32 == 31:
                    # Stay at most 128 frames ahead of the injector (the veth ring holds 256).
                    deadline = time.monotonic() + 5
                    while path.stats().a_to_b.seen < seq + 1 - 128 and time.monotonic() < deadline:
                        time.sleep(0.0002)
            rx.settimeout(0.5)
            got: list[int] = []
            while True:
                try:
                    got.append(struct.unpack("!I", rx.recv(2048)[:4])[0])
                except TimeoutError:
                    break
        s = path.wait_settled().a_to_b

    counts = Counter(got)
    missing = args.count - len(counts)
    doubled = sum(c - 1 for c in counts.values())
    top, late = -1, 0
    for seq in got:
        late += seq < top
        top = max(top, seq)
    print(f"sent {args.count}, received {len(got)}")
    print(f"missing {missing} (injector dropped {s.dropped})")
    print(f"doubled {doubled} (middlebox duplicated {s.duplicated})")
    print(
        f"late {late} (middlebox reordered {s.reordered}, released at the timeout "
        f"{s.reorder_timeouts}; duplicates are late too when overtaken)"
    )
    print(f"counters balance: {s.balanced()}")
    # Every reordered frame is overtaken; duplicates, too, go through the middlebox and are
    # often overtaken on the way, so both copies can add to the late ones.
    ok = (
        missing == s.dropped
        and doubled == s.duplicated
        and s.reordered <= late <= s.reordered + s.reorder_timeouts + 2 * s.duplicated
        and s.balanced()
    )
    print("OK: the receiver saw what the counters say" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
