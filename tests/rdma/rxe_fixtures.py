"""Real rxe packets for tests/data/rxe/: rxe in the VM sends, a capture on the host side keeps them.

Nothing RDMA answers on the host, so only requests are captured: the verbs clients run in the
soft-RoCE VM on ``rxe1`` (the L2 segment's NIC, see ``kbypass.testing.rxe_vm.L2Segment``) and
send to the host-side address. Their out-of-band TCP exchange (``ibv_*_pingpong`` and perftest
both swap QPN/PSN/GID, perftest also rkey/address, over TCP port 18515 before any RDMA traffic)
is answered by :class:`OobMirror`, which runs in the host namespace and sends every message of
the client back to it, with the QPN, PSN, rkey, address and GID in the key messages replaced by
the made-up values below: so the client connects its QP to ``FAKE_QPN`` at the host's GID and
starts sending. RC requests then go unanswered and are retransmitted (the captures keep a few
retries), until the client gives up with a retry-exceeded error.

``rc_responses.pcap`` goes the other way: ``vm_responder.py`` (kbypass.rdma in the VM) holds an
RC QP connected to the made-up peer, and the host sends it requests built here
(:func:`roce_frame`, ICRC included) through an AF_PACKET socket in the host namespace
(internal mode ``inject``), one per :data:`RESPONDER_STEPS` entry; the capture keeps both
directions, rxe's ACKs, NAKs, read responses and atomic acknowledgements included.

``rc_send_inv_responses.pcap`` is the same with :data:`SEND_INV_STEPS` (a SEND with invalidate
naming the responder's own MR, which a remote peer may not invalidate, between two SENDs), three
receives posted, and the responder's completions kept next to it as
``rc_send_inv_responses.wc.json``; ``rc_srq_responses.pcap`` likewise with
:data:`SRQ_STEPS`, the responder's QP taking its two receives from a shared receive queue;
``rc_send_inv_mw_responses.pcap`` with :data:`SEND_INV_MW_STEPS` sent to ``vm_mw_responder.py``
(pyverbs under the system Python: python3-pyverbs), whose type 2 memory window a SEND with
invalidate may invalidate; ``rc_rd_atomic_responses.pcap`` and ``rc_no_rd_atomic_responses.pcap``
send READs through that window to it with ``max_dest_rd_atomic`` 2 (:data:`RD_ATOMIC_STEPS`:
duplicates answered only from held resources) and 0 (a READ is NAKed).

Scenarios marked ``ipv6`` run over IPv6 GIDs: the generator gives the VM's ``eth1``
:data:`GUEST6` and a permanent neighbour entry for :data:`HOST6` (the host side needs no address:
it only captures), finds rxe1's RoCE v2 GID of :data:`GUEST6`, and the mirror hands out
:data:`HOST6` as the peer's GID.

Regenerate every fixture (as root, about two minutes under TCG)::

    python tests/rdma/rxe_fixtures.py                 # all, into tests/data/rxe/
    python tests/rdma/rxe_fixtures.py rc_read ud_send # some

The internal modes ``oob-mirror --bind IP`` and ``inject --ifname IF HEX...`` are how the
generator runs the mirror and the request sender inside the host namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

#: What the mirror hands out as the "server's" QP: the clients' packets are addressed to it.
FAKE_QPN = 0x00A5A5
FAKE_PSN = 0x0C0FFE
FAKE_RKEY = 0x1234ABCD
FAKE_VADDR = 0x00007F0012340000
OOB_PORT = 18515
#: IPv6 addresses of the L2 segment for the IPv6 scenarios (2001:2::/48 is IPv6's benchmarking
#: range, as 198.18.0.0/15 is IPv4's).
HOST6 = "2001:2:0:1::1"
GUEST6 = "2001:2:0:1::2"
HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "rxe"

# ibv_*_pingpong: "%04x:%06x:%06x:%s" (lid, qpn, psn, gid as 32 hex digits), NUL-terminated.
_PP = re.compile(rb"([0-9a-f]{4}):([0-9a-f]{6}):([0-9a-f]{6}):([0-9a-f]{32})\x00")
# perftest (4.5) KEY_PRINT_FMT_GID: lid:out_reads:qpn:psn:rkey:vaddr:16 gid bytes:srqn:
_PT = re.compile(
    rb"([0-9a-f]{4}):([0-9a-f]{4}):([0-9a-f]{6}):([0-9a-f]{6}):([0-9a-f]{8}):([0-9a-f]{16}):"
    rb"((?:[0-9a-f]{2}:){16})([0-9a-f]{8}):\x00"
)


def mapped_gid(ip: str) -> bytes:
    """The 16 bytes of the IPv4-mapped GID ``::ffff:ip``."""
    return bytes(10) + b"\xff\xff" + socket.inet_aton(ip)


def rewrite(msg: bytes, gid: bytes) -> bytes:
    """The reply to one client message: key messages with the made-up peer, the rest as is."""
    m = _PP.fullmatch(msg)
    if m:
        out = b"%s:%06x:%06x:%s\x00" % (m.group(1), FAKE_QPN, FAKE_PSN, gid.hex().encode())
        assert len(out) == len(msg)
        return out
    m = _PT.fullmatch(msg)
    if m:
        gid_text = b"".join(b"%02x:" % b for b in gid)
        out = b"%s:%s:%06x:%06x:%08x:%016x:%s%s:\x00" % (
            m.group(1), m.group(2), FAKE_QPN, FAKE_PSN, FAKE_RKEY, FAKE_VADDR, gid_text,
            m.group(8),
        )  # fmt: skip
        assert len(out) == len(msg)
        return out
    return msg


class OobMirror:
    """A TCP server answering the verbs tools' out-of-band exchange as a made-up peer.

    The clients (``ibv_*_pingpong``, perftest) always write a message and then read the
    server's message of the same size, so each ``recv`` is one client message; the mirror
    sends it back through :func:`rewrite`. One thread per connection; :meth:`close` stops it.
    """

    def __init__(self, bind: str, port: int = OOB_PORT, gid: bytes | None = None) -> None:
        self.gid = mapped_gid(bind) if gid is None else gid
        self.sock = socket.create_server((bind, port), reuse_port=False)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.rewritten = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(120)
        with conn:
            try:
                while True:
                    msg = conn.recv(4096)
                    if not msg:
                        return
                    reply = rewrite(msg, self.gid)
                    if reply != msg:
                        self.rewritten += 1
                        print(
                            f"oob-mirror: answered a {len(msg)}-byte key message", file=sys.stderr
                        )
                    conn.sendall(reply)
            except OSError:
                return

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One fixture: the client command run in the VM and how many packets to keep."""

    name: str
    what: str
    command: str  # {dev}, {gid}, {host}, {python}, {here} and the FAKE_* values are filled in
    packets: int
    ipv6: bool = False  # GIDs of GUEST6 and HOST6 instead of the IPv4-mapped ones


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "ud_send",
        "UD SEND only, 64 B, QKey 0x11111111, DETH (ibv_ud_pingpong client)",
        "ibv_ud_pingpong -d {dev} -g {gid} -s 64 -n 1 {host}",
        1,
    ),
    Scenario(
        "rc_send_only",
        "RC SEND only, 64 B, then its two retransmissions with the same PSN "
        "(ibv_rc_pingpong client)",
        "ibv_rc_pingpong -d {dev} -g {gid} -s 64 -n 1 {host}",
        3,
    ),
    Scenario(
        "rc_send_multi",
        "RC SEND first/middle/last, one 2500 B message at path MTU 1024 (ibv_rc_pingpong client)",
        "ibv_rc_pingpong -d {dev} -g {gid} -s 2500 -m 1024 -n 1 {host}",
        3,
    ),
    Scenario(
        "uc_send",
        "UC SEND only, 64 B (ibv_uc_pingpong client)",
        "ibv_uc_pingpong -d {dev} -g {gid} -s 64 -n 1 {host}",
        1,
    ),
    Scenario(
        "rc_write",
        "RC RDMA WRITE only, 64 B each, RETH with the made-up rkey/address (ib_write_bw client)",
        "ib_write_bw -d {dev} -x {gid} -F -s 64 -n 5 -t 4 {host}",
        4,
    ),
    Scenario(
        "rc_write_multi",
        "RC RDMA WRITE first/middle/last, one 2500 B write at MTU 1024 (ib_write_bw client)",
        "ib_write_bw -d {dev} -x {gid} -F -s 2500 -m 1024 -n 5 -t 1 {host}",
        3,
    ),
    Scenario(
        "rc_read",
        "RC RDMA READ requests, 4096 B each (ib_read_bw client)",
        "ib_read_bw -d {dev} -x {gid} -F -s 4096 -n 5 -t 2 -o 2 {host}",
        2,
    ),
    Scenario(
        "rc_fetch_add",
        "RC FETCH_AND_ADD requests, AtomicETH (ib_atomic_bw client)",
        "ib_atomic_bw -d {dev} -x {gid} -F -A FETCH_AND_ADD -n 5 -t 2 -o 2 {host}",
        2,
    ),
    Scenario(
        "rc_cmp_swap",
        "RC COMPARE_AND_SWAP requests, AtomicETH (ib_atomic_bw client)",
        "ib_atomic_bw -d {dev} -x {gid} -F -A CMP_AND_SWAP -n 5 -t 2 -o 2 {host}",
        2,
    ),
    Scenario(
        "rc_imm",
        "RC SEND only with immediate 0xC0FFEE (16 B), then RDMA WRITE only with immediate 0xBEEF "
        "(32 B), from send PSN 0x001000 (kbypass.rdma client, tests/rdma/vm_imm_client.py)",
        "{python} {here}/vm_imm_client.py {dev} {gid} {host} {qpn} {psn} {rkey} {vaddr} 60",
        2,
    ),
    Scenario(
        "rc_send_inv",
        "RC SEND with invalidate of the made-up rkey, 2500 B at MTU 1024: first, middle, last "
        "with invalidate (pyverbs client, tests/rdma/vm_inv_client.py)",
        "/usr/bin/python3 {here}/vm_inv_client.py {dev} {gid} {host} {qpn} {psn} {rkey} 60",
        3,
    ),
    Scenario(
        "rc_read_credits",
        "RC RDMA READs with max_rd_atomic 2: four 8 B READs posted, two sent, and retransmitted "
        "(no response), never the third (pyverbs client, tests/rdma/vm_inv_client.py)",
        "/usr/bin/python3 {here}/vm_inv_client.py {dev} {gid} {host} {qpn} {psn} {rkey} 60 reads",
        4,
    ),
    Scenario(
        "ud_send_ipv6",
        "UD SEND only, 64 B, over IPv6 GIDs (ibv_ud_pingpong client)",
        "ibv_ud_pingpong -d {dev} -g {gid} -s 64 -n 1 {host}",
        1,
        ipv6=True,
    ),
    Scenario(
        "rc_send_multi_ipv6",
        "RC SEND first/middle/last, 2500 B at MTU 1024, over IPv6 GIDs (ibv_rc_pingpong client)",
        "ibv_rc_pingpong -d {dev} -g {gid} -s 2500 -m 1024 -n 1 {host}",
        3,
        ipv6=True,
    ),
    Scenario(
        "rc_read_ipv6",
        "RC RDMA READ requests, 4096 B each, over IPv6 GIDs (ib_read_bw client)",
        "ib_read_bw -d {dev} -x {gid} -F -s 4096 -n 5 -t 2 -o 2 {host}",
        2,
        ipv6=True,
    ),
)


def gid_index(vm: object, device: str, ip: str, wait: float = 0.0) -> int:
    """The index of ``device``'s RoCE v2 GID of ``ip`` in the VM (from ``ibv_devinfo -v``).

    An IPv4 address has the GID ``::ffff:ip``, an IPv6 address its own. ``wait`` seconds are
    allowed for the GID to appear (after an address was just added).
    """
    from kbypass.testing.rxe_vm import RxeVm

    assert isinstance(vm, RxeVm)
    gid = ip if ":" in ip else f"::ffff:{ip}"
    deadline = time.monotonic() + wait
    while True:
        out = vm.run(["ibv_devinfo", "-v", "-d", device]).stdout
        m = re.search(rf"GID\[\s*(\d+)\]:\s+{re.escape(gid)}, RoCE v2$", out, re.M)
        if m is not None:
            return int(m.group(1))
        if time.monotonic() > deadline:
            raise LookupError(f"{device} has no RoCE v2 GID {gid}:\n{out}")
        time.sleep(0.5)


def setup_ipv6(vm: object) -> None:
    """Give the VM's L2 NIC :data:`GUEST6` and a permanent neighbour entry for :data:`HOST6`."""
    from kbypass.testing.rxe_vm import RxeVm

    assert isinstance(vm, RxeVm) and vm.l2 is not None
    seg = vm.l2
    dev = seg.guest_ifname
    vm.run(f"sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=0").check()
    vm.run(f"ip -6 addr add {GUEST6}/64 dev {dev} nodad").check()
    vm.run(f"ip -6 neigh replace {HOST6} lladdr {seg.host_mac} dev {dev} nud permanent").check()
    gid_index(vm, seg.guest_rxe, GUEST6, wait=30.0)


def capture(vm: object, scenario: Scenario, out: Path, timeout: float = 90.0) -> Path:
    """Run one scenario's client in the VM and write its first packets to ``out``."""
    from kbypass.testing.rxe_vm import RxeVm

    assert isinstance(vm, RxeVm) and vm.l2 is not None
    seg = vm.l2
    dumpcap = shutil.which("dumpcap")
    if dumpcap is None:
        raise FileNotFoundError("dumpcap is missing: apt-get install tshark")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.pcap")
    tmp.unlink(missing_ok=True)
    gid_args = ["--gid", socket.inet_pton(socket.AF_INET6, HOST6).hex()] if scenario.ipv6 else []
    mirror = seg.popen(
        sys.executable, str(Path(__file__).resolve()), "oob-mirror", "--bind", seg.host_ip,
        *gid_args, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    cap = None
    job = None
    try:
        assert mirror.stdout is not None
        if mirror.stdout.readline().strip() != "listening":
            raise RuntimeError("the OOB mirror did not start")
        idx = gid_index(vm, seg.guest_rxe, GUEST6 if scenario.ipv6 else seg.guest_ip)
        cap = seg.popen(
            dumpcap, "-q", "-P", "-i", seg.host_ifname, "-f", "udp port 4791",
            "-c", str(scenario.packets), "-a", f"duration:{int(timeout)}", "-w", str(tmp),
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # dumpcap says nothing with -q; give it a moment to attach its filter.
        time.sleep(1.0)
        cmd = scenario.command.format(
            dev=seg.guest_rxe, gid=idx, host=seg.host_ip, python=sys.executable, here=HERE,
            qpn=hex(FAKE_QPN), psn=hex(FAKE_PSN), rkey=hex(FAKE_RKEY), vaddr=hex(FAKE_VADDR),
        )  # fmt: skip
        pidfile = f"/tmp/kbx-client-{scenario.name}.pid"
        job = vm.start(f"echo $$ > {pidfile}; exec timeout {int(timeout)} {cmd}", timeout=timeout)
        cap.wait(timeout + 30)
        if cap.returncode != 0:
            err = cap.stderr.read() if cap.stderr else ""
            raise RuntimeError(f"dumpcap failed ({cap.returncode}): {err}")
        # The client waits for answers that never come (or retries): stop it, by its PID.
        vm.run(f"kill $(cat {pidfile})")
        result = job.wait()
        if not tmp.exists() or tmp.stat().st_size <= 24:
            raise RuntimeError(
                f"nothing captured for {scenario.name}; the client said:\n"
                f"{result.stdout}{result.stderr}"
            )
        tmp.chmod(0o644)
        tmp.rename(out)
        return out
    finally:
        for p in (cap, mirror):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if job is not None:
            job.wait()
        tmp.unlink(missing_ok=True)


# --- requests from the host, rxe's responses -------------------------------------------------


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def roce_frame(
    macs: tuple[str, str],
    ips: tuple[str, str],
    opcode: int,
    qpn: int,
    psn: int,
    *,
    ackreq: bool = False,
    ext: bytes = b"",
    payload: bytes = b"",
    sport: int = 0xC0DE,
) -> bytes:
    """One IPv4 RoCEv2 frame (Ethernet to ICRC) from ``macs[0]``/``ips[0]`` to the others."""
    pad = -len(payload) % 4
    bth = struct.pack(">BBHII", opcode, pad << 4, 0xFFFF, qpn, (ackreq << 31) | psn)
    body = bth + ext + payload + bytes(pad)
    udp = struct.pack(">HHHH", sport, 4791, 8 + len(body) + 4, 0)
    ip = bytearray(struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(body) + 4, 0, 0x4000, 64, 17, 0,
        socket.inet_aton(ips[0]), socket.inet_aton(ips[1]),
    ))  # fmt: skip
    ip[10:12] = _ip_checksum(bytes(ip)).to_bytes(2, "big")
    masked_ip = bytes(ip[:1]) + b"\xff" + bytes(ip[2:8]) + b"\xff" + bytes(ip[9:10]) + b"\xff\xff"
    masked_ip += bytes(ip[12:])
    masked = b"\xff" * 8 + masked_ip + udp[:6] + b"\xff\xff" + bth[:4] + b"\xff" + body[5:]
    icrc = zlib.crc32(masked).to_bytes(4, "little")
    eth = bytes.fromhex(macs[1].replace(":", "")) + bytes.fromhex(macs[0].replace(":", ""))
    return eth + b"\x08\x00" + bytes(ip) + udp + body + icrc


def reth(va: int, rkey: int, length: int) -> bytes:
    """An RDMA extended transport header."""
    return struct.pack(">QII", va, rkey, length)


def atomic_eth(va: int, rkey: int, swap_add: int, compare: int) -> bytes:
    """An atomic extended transport header."""
    return struct.pack(">QIQQ", va, rkey, swap_add, compare)


def ieth(rkey: int) -> bytes:
    """An invalidate extended transport header: the R_Key to invalidate."""
    return struct.pack(">I", rkey)


#: The fixture of rxe's answers to requests the host sends (see :func:`capture_responses`).
RESPONSES = "rc_responses"
#: What the host sends the responder, in order: (label, opcode, PSN offset from FAKE_PSN).
RESPONDER_STEPS: tuple[tuple[str, int, int], ...] = (
    ("SEND only, 32 B -> ACK", 0x04, 0),
    ("SEND only, no receive posted -> RNR NAK", 0x04, 1),
    ("RDMA READ 2500 B -> READ response first/middle/last", 0x0C, 1),
    ("FETCH_ADD 5 on 41 -> ATOMIC ACK, original 41", 0x14, 4),
    ("COMPARE_SWAP 46 -> 7 -> ATOMIC ACK, original 46", 0x13, 5),
    ("RDMA WRITE only, 16 B -> ACK", 0x0A, 6),
    ("SEND only, PSN 3 ahead -> NAK PSN sequence error", 0x04, 10),
    ("RDMA WRITE only again (duplicate) -> ACK", 0x0A, 6),
    ("RDMA WRITE only, bad rkey -> NAK remote access error", 0x0A, 7),
)


def responder_frames(seg: object, info: dict[str, int]) -> list[bytes]:
    """The frames of :data:`RESPONDER_STEPS` for the responder ``info`` (vm_responder.py)."""
    from kbypass.testing.rxe_vm import L2Segment

    assert isinstance(seg, L2Segment)
    macs, ips = (seg.host_mac, seg.guest_mac), (seg.host_ip, seg.guest_ip)
    qpn, rkey, addr, word = info["qpn"], info["rkey"], info["addr"], info["atomic_addr"]
    ext = {
        2: reth(addr, rkey, 2500),
        3: atomic_eth(word, rkey, 5, 0),
        4: atomic_eth(word, rkey, 7, 46),
        5: reth(addr + 512, rkey, 16),
        7: reth(addr + 512, rkey, 16),
        8: reth(addr + 512, rkey ^ 0x5A5A5A00, 16),
    }
    payload = {0: bytes(range(32)), 1: bytes(range(32)), 5: b"kbypass-rxe-fix!", 6: bytes(32)}
    payload |= {7: payload[5], 8: payload[5]}
    return [
        roce_frame(
            macs,
            ips,
            op,
            qpn,
            (FAKE_PSN + off) & 0xFFFFFF,
            ackreq=True,
            ext=ext.get(i, b""),
            payload=payload.get(i, b""),
        )
        for i, (_, op, off) in enumerate(RESPONDER_STEPS)
    ]


#: The fixture of rxe's answers to a SEND with invalidate (see :func:`capture_responses`).
SEND_INV = "rc_send_inv_responses"
#: What the host sends that responder (three receives posted), in order.
SEND_INV_STEPS: tuple[tuple[str, int, int], ...] = (
    ("SEND only, 32 B -> ACK, receive 1 completes", 0x04, 0),
    ("SEND only with invalidate of the responder's MR rkey (not remotely invalidatable)", 0x17, 1),
    ("SEND only, 32 B, after it", 0x04, 2),
)


def send_inv_frames(seg: object, info: dict[str, int]) -> list[bytes]:
    """The frames of :data:`SEND_INV_STEPS` for the responder ``info`` (vm_responder.py)."""
    from kbypass.testing.rxe_vm import L2Segment

    assert isinstance(seg, L2Segment)
    macs, ips = (seg.host_mac, seg.guest_mac), (seg.host_ip, seg.guest_ip)
    return [
        roce_frame(
            macs,
            ips,
            op,
            info["qpn"],
            (FAKE_PSN + off) & 0xFFFFFF,
            ackreq=True,
            ext=ieth(info["rkey"]) if op == 0x17 else b"",
            payload=bytes(range(i * 32, i * 32 + 32)),
        )
        for i, (_, op, off) in enumerate(SEND_INV_STEPS)
    ]


#: The fixture of rxe's answers when its QP takes receives from a shared receive queue.
SRQ = "rc_srq_responses"
#: What the host sends that responder (two receives posted to its SRQ), in order.
SRQ_STEPS: tuple[tuple[str, int, int], ...] = (
    ("SEND only, 32 B -> ACK, SRQ receive 1", 0x04, 0),
    ("SEND only, 32 B -> ACK, SRQ receive 2", 0x04, 1),
    ("SEND only, 32 B, the SRQ empty -> RNR NAK", 0x04, 2),
)


def srq_frames(seg: object, info: dict[str, int]) -> list[bytes]:
    """The frames of :data:`SRQ_STEPS` for the responder ``info`` (vm_responder.py)."""
    from kbypass.testing.rxe_vm import L2Segment

    assert isinstance(seg, L2Segment)
    macs, ips = (seg.host_mac, seg.guest_mac), (seg.host_ip, seg.guest_ip)
    return [
        roce_frame(
            macs,
            ips,
            op,
            info["qpn"],
            (FAKE_PSN + off) & 0xFFFFFF,
            ackreq=True,
            payload=bytes(range(i * 32, i * 32 + 32)),
        )
        for i, (_, op, off) in enumerate(SRQ_STEPS)
    ]


#: The fixture of rxe invalidating a memory window for a SEND with invalidate.
SEND_INV_MW = "rc_send_inv_mw_responses"
#: What the host sends vm_mw_responder.py's QP (a type 2 MW bound, two receives), in order.
SEND_INV_MW_STEPS: tuple[tuple[str, int, int], ...] = (
    ("SEND only with invalidate of the bound MW's rkey -> ACK, receive 1 WITH_INV", 0x17, 0),
    ("RDMA WRITE only, 16 B, through the invalidated MW rkey -> NAK remote access error", 0x0A, 1),
)


def send_inv_mw_frames(seg: object, info: dict[str, int]) -> list[bytes]:
    """The frames of :data:`SEND_INV_MW_STEPS` for the responder ``info`` (vm_mw_responder.py)."""
    from kbypass.testing.rxe_vm import L2Segment

    assert isinstance(seg, L2Segment)
    macs, ips = (seg.host_mac, seg.guest_mac), (seg.host_ip, seg.guest_ip)
    qpn, mw_rkey = info["qpn"], info["mw_rkey"]
    return [
        roce_frame(macs, ips, 0x17, qpn, FAKE_PSN, ackreq=True, ext=ieth(mw_rkey),
                   payload=bytes(range(32))),
        roce_frame(macs, ips, 0x0A, qpn, (FAKE_PSN + 1) & 0xFFFFFF, ackreq=True,
                   ext=reth(info["addr"] + 512, mw_rkey, 16), payload=b"kbypass-rxe-fix!"),
    ]  # fmt: skip


#: rxe's read resources: vm_mw_responder.py with max_dest_rd_atomic 2, then 0.
RD_ATOMIC = "rc_rd_atomic_responses"
NO_RD_ATOMIC = "rc_no_rd_atomic_responses"
#: What the host sends the max_dest_rd_atomic 2 responder: (label, PSN offset, read offset).
RD_ATOMIC_STEPS: tuple[tuple[str, int, int], ...] = (
    ("READ 8 B -> READ response only", 0, 0),
    ("READ 8 B -> READ response only", 1, 8),
    ("READ 8 B -> READ response only (its resource recycles the first read's)", 2, 16),
    ("the second READ again (duplicate, resource held) -> READ response only again", 1, 8),
    ("the first READ again (duplicate, resource recycled) -> nothing (class D: dropped)", 0, 0),
)


def rd_atomic_frames(seg: object, info: dict[str, int]) -> list[bytes]:
    """The READs of :data:`RD_ATOMIC_STEPS` (through the memory window's rkey)."""
    from kbypass.testing.rxe_vm import L2Segment

    assert isinstance(seg, L2Segment)
    macs, ips = (seg.host_mac, seg.guest_mac), (seg.host_ip, seg.guest_ip)
    qpn, mw_rkey = info["qpn"], info["mw_rkey"]
    frames = []
    for _, off, at in RD_ATOMIC_STEPS:
        ext = reth(info["addr"] + at, mw_rkey, 8)
        frames.append(roce_frame(macs, ips, 0x0C, qpn, (FAKE_PSN + off) & 0xFFFFFF, ackreq=True,
                                 ext=ext))  # fmt: skip
    return frames


def no_rd_atomic_frames(seg: object, info: dict[str, int]) -> list[bytes]:
    """A READ to the max_dest_rd_atomic 0 responder (NAK invalid request), then a SEND."""
    from kbypass.testing.rxe_vm import L2Segment

    assert isinstance(seg, L2Segment)
    macs, ips = (seg.host_mac, seg.guest_mac), (seg.host_ip, seg.guest_ip)
    return [
        roce_frame(macs, ips, 0x0C, info["qpn"], FAKE_PSN, ackreq=True,
                   ext=reth(info["addr"], info["mw_rkey"], 8)),
        roce_frame(macs, ips, 0x04, info["qpn"], (FAKE_PSN + 1) & 0xFFFFFF, ackreq=True,
                   payload=bytes(32)),
    ]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ResponderFixture:
    """How a responder fixture is made: its frames, and the responder in the VM."""

    build: Callable[[object, dict[str, int]], list[bytes]]
    recvs: int = 1  # receives posted (wr_id 1, 2, ...)
    srq: bool = False  # posted to a shared receive queue the QP takes them from
    mw: bool = False  # vm_mw_responder.py under the system Python (pyverbs), not vm_responder.py
    max_dest_rd_atomic: int = 1  # the responder's read and atomic resources (mw only)


#: Responder fixtures by name.
RESPONDER_FIXTURES = {
    RESPONSES: ResponderFixture(responder_frames),
    SEND_INV: ResponderFixture(send_inv_frames, recvs=3),
    SRQ: ResponderFixture(srq_frames, recvs=2, srq=True),
    SEND_INV_MW: ResponderFixture(send_inv_mw_frames, mw=True),
    RD_ATOMIC: ResponderFixture(rd_atomic_frames, mw=True, max_dest_rd_atomic=2),
    NO_RD_ATOMIC: ResponderFixture(no_rd_atomic_frames, mw=True, max_dest_rd_atomic=0),
}


def capture_responses(vm: object, out: Path, gap: float = 1.0) -> Path:
    """Send the requests of fixture ``out.stem`` (:data:`RESPONDER_FIXTURES`) to an rxe
    responder in the VM; keep both directions, and the responder's completions in
    ``<stem>.wc.json`` when it had any."""
    from kbypass.testing.rxe_vm import RxeVm

    assert isinstance(vm, RxeVm) and vm.l2 is not None
    seg = vm.l2
    fx = RESPONDER_FIXTURES[out.stem]
    info_path = out.parent / ".responder.json"
    wc_path = out.parent / ".responder.json.wc.json"
    info_path.unlink(missing_ok=True)
    wc_path.unlink(missing_ok=True)
    tmp = out.with_suffix(".tmp.pcap")
    tmp.unlink(missing_ok=True)
    idx = gid_index(vm, seg.guest_rxe, seg.guest_ip)
    if fx.mw:
        probe = subprocess.run(["/usr/bin/python3", "-c", "import pyverbs"], check=False,
                               capture_output=True)  # fmt: skip
        if probe.returncode != 0:
            raise FileNotFoundError(
                f"{out.stem} needs pyverbs for the system Python: apt-get install python3-pyverbs"
            )
        argv = ["/usr/bin/python3", str(HERE / "vm_mw_responder.py")]
    else:
        argv = [sys.executable, str(HERE / "vm_responder.py")]
    argv += [seg.guest_rxe, str(idx), seg.host_ip, hex(FAKE_QPN), hex(FAKE_PSN), str(info_path),
             "120"]  # fmt: skip
    if fx.mw:
        argv.append(str(fx.max_dest_rd_atomic))
    else:
        argv += [str(fx.recvs), *(["srq"] if fx.srq else [])]
    pidfile = "/tmp/kbx-responder.pid"
    job = vm.start(f"echo $$ > {pidfile}; exec {shlex.join(argv)}", timeout=150)
    cap = None
    try:
        deadline = time.monotonic() + 120
        while not info_path.exists():
            if job.done() or time.monotonic() > deadline:
                r = job.wait()
                raise RuntimeError(f"the responder did not start:\n{r.stdout}{r.stderr}")
            time.sleep(0.1)
        info = json.loads(info_path.read_text())
        frames = fx.build(seg, info)
        cap = seg.popen(
            "dumpcap", "-q", "-P", "-i", seg.host_ifname, "-f", "udp port 4791", "-w", str(tmp),
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0)
        inject = seg.run(
            sys.executable, str(Path(__file__).resolve()), "inject", "--ifname",
            seg.host_ifname, "--gap", str(gap), *(f.hex() for f in frames), timeout=120,
        )  # fmt: skip
        if inject.returncode != 0:
            raise RuntimeError(f"inject failed: {inject.stderr}")
        time.sleep(2 * gap)
        cap.terminate()
        cap.wait(30)
        tmp.chmod(0o644)
        tmp.rename(out)
        if out.stem != RESPONSES:
            wcs = json.loads(wc_path.read_text()) if wc_path.exists() else []
            out.with_suffix(".wc.json").write_text(json.dumps(wcs, indent=1) + "\n")
        return out
    finally:
        if cap is not None and cap.poll() is None:
            cap.kill()
            cap.wait()
        if not job.done():
            vm.run(f"kill $(cat {pidfile})")  # by its PID, which it wrote before exec
        job.wait()
        info_path.unlink(missing_ok=True)
        wc_path.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def inject(ifname: str, frames: Sequence[bytes], gap: float) -> None:
    """Send ``frames`` out of ``ifname`` (AF_PACKET), ``gap`` seconds apart."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for f in frames:
            s.send(f)
            time.sleep(gap)


def generate(names: Sequence[str], out_dir: Path) -> list[Path]:
    """Boot a VM with the L2 segment and capture the named scenarios (all when empty)."""
    from kbypass.testing.rxe_vm import RxeVm

    chosen = [s for s in SCENARIOS if not names or s.name in names]
    unknown = set(names) - {s.name for s in SCENARIOS} - set(RESPONDER_FIXTURES)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}: {[s.name for s in SCENARIOS]}")
    made = []
    say = lambda m: print(f"rxe-vm: {m}", file=sys.stderr)  # noqa: E731
    out_dir.mkdir(parents=True, exist_ok=True)
    # out_dir is shared writable: the responder tells the host its QPN/rkey/address there.
    with RxeVm(l2=True, visible=[HERE], shares=[out_dir], log=say) as vm:
        if any(s.ipv6 for s in chosen):
            setup_ipv6(vm)
        for s in chosen:
            t = time.monotonic()
            made.append(capture(vm, s, out_dir / f"{s.name}.pcap"))
            print(
                f"{s.name} ({s.what}): {made[-1]} in {time.monotonic() - t:.1f} s", file=sys.stderr
            )
        for name in RESPONDER_FIXTURES:
            if names and name not in names:
                continue
            t = time.monotonic()
            made.append(capture_responses(vm, out_dir / f"{name}.pcap"))
            print(f"{name}: {made[-1]} in {time.monotonic() - t:.1f} s", file=sys.stderr)
    return made


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="action")
    m = sub.add_parser("oob-mirror")
    m.add_argument("--bind", required=True)
    m.add_argument("--port", type=int, default=OOB_PORT)
    m.add_argument("--gid", help="the peer GID to hand out, 32 hex digits (default ::ffff:BIND)")
    i = sub.add_parser("inject")
    i.add_argument("--ifname", required=True)
    i.add_argument("--gap", type=float, default=1.0)
    i.add_argument("frames", nargs="+", help="frames in hex")
    g = sub.add_parser("generate")
    g.add_argument("--out", type=Path, default=DATA)
    g.add_argument("names", nargs="*")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] not in (["oob-mirror"], ["inject"], ["generate"], ["-h"], ["--help"]):
        argv.insert(0, "generate")
    args = ap.parse_args(argv)
    if args.action == "oob-mirror":
        gid = bytes.fromhex(args.gid) if args.gid else None
        mirror = OobMirror(args.bind, args.port, gid)
        print("listening", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            mirror.close()
        return 0
    if args.action == "inject":
        inject(args.ifname, [bytes.fromhex(f) for f in args.frames], args.gap)
        return 0
    generate(args.names, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
