"""``kbypass capture`` / ``kbypass.capture``: pcap files read back by dpkt, filters, counts, Ctrl-C.

Root tests on the plugin's ``veth_pair`` (capture on side b) with the live-frames generator or a
kernel UDP socket on side a.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dpkt
import pytest

import kbypass
from _signals import sigint_default
from kbypass.testing import TrafficGenerator, VethPair

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for AF_XDP and namespaces")


def read_pcap(path: Path) -> tuple[dpkt.pcap.Reader, list[tuple[float, bytes]]]:
    with path.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        return reader, [(ts, bytes(buf)) for ts, buf in reader]


class CaptureThread(threading.Thread):
    """kbypass.capture in a thread (the GIL is released while it runs)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.kwargs = kwargs
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = kbypass.capture(**self.kwargs)
        except BaseException as e:
            self.error = e

    def summary(self, timeout: float = 30) -> dict[str, Any]:
        self.join(timeout)
        assert not self.is_alive(), "capture did not stop"
        if self.error:
            raise self.error
        assert self.result is not None
        return self.result


def _programs(pair: VethPair) -> str:
    return pair.run("b", "ip", "-d", "link", "show", pair.b.ifname).stdout


@pytest.mark.traffic(size=100)
def test_pcap_has_exactly_count_frames_with_ns_timestamps(
    veth_pair: VethPair, traffic: TrafficGenerator, tmp_path: Path
) -> None:
    out = tmp_path / "cap.pcap"
    traffic.start(rate=200_000, duration=20)
    t0 = time.time()
    s = kbypass.capture(
        veth_pair.b.ifname, netns=veth_pair.b.netns, count=5000, write=out, duration=15
    )
    t1 = time.time()
    traffic.stop()
    assert s["stopped"] == "count" and s["packets"] == 5000 and s["bytes"] == 5000 * 100
    assert s["file"] == str(out) and s["queues"] == [0] and s["mode"] == "copy"
    assert s["xdp_mode"] in ("native", "generic") and s["pps"] > 0
    reader, frames = read_pcap(out)
    assert out.read_bytes()[:4] == bytes.fromhex("4d3cb2a1"), "nanosecond pcap magic"
    assert reader.datalink() == dpkt.pcap.DLT_EN10MB
    assert len(frames) == 5000
    assert all(buf == traffic.frame for _, buf in frames)
    stamps = [ts for ts, _ in frames]
    assert t0 - 0.01 <= stamps[0] <= stamps[-1] <= t1 + 0.01
    assert stamps == sorted(stamps)
    assert any(int(ts * 10**9) % 1000 for ts in stamps), "sub-microsecond digits are kept"
    ip = dpkt.ethernet.Ethernet(frames[0][1]).data
    assert socket.inet_ntoa(ip.src) == veth_pair.a.ip and ip.data.dport == 9000
    assert "prog/xdp" not in _programs(veth_pair), "the program is detached after the capture"


@pytest.mark.traffic(size=100)
def test_tshark_reads_the_file(
    veth_pair: VethPair, traffic: TrafficGenerator, tmp_path: Path
) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("optional: tshark is not installed (apt-get install tshark)")
    out = tmp_path / "ts.pcap"
    traffic.start(rate=50_000, duration=20)
    kbypass.capture(veth_pair.b.ifname, netns=veth_pair.b.netns, count=50, write=out)
    traffic.stop()
    r = subprocess.run(
        [tshark, "-r", str(out), "-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src",
         "-e", "udp.dstport", "-e", "frame.len"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(rows) == 50
    for epoch, src, dport, length in rows:
        assert (src, dport, length) == (veth_pair.a.ip, "9000", "100")
        assert len(epoch.split(".")[1]) == 9, epoch  # nanosecond resolution


def test_snaplen_and_queues_all(veth_pair: VethPair, tmp_path: Path) -> None:
    out = tmp_path / "snap.pcap"
    gen = TrafficGenerator(veth_pair, "a", size=1514)
    gen.start(rate=100_000, duration=20)
    s = kbypass.capture(
        veth_pair.b.ifname, netns=veth_pair.b.netns, queues="all", count=100, write=out,
        snaplen=96,
    )  # fmt: skip
    gen.stop()
    assert s["packets"] == 100 and s["bytes"] == 100 * 1514
    with out.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.snaplen == 96
        frames = [buf for _, buf in reader]
    assert len(frames) == 100 and all(buf == gen.frame[:96] for buf in frames)


def test_filter_captures_only_matching_frames_and_the_rest_reach_the_kernel(
    veth_pair: VethPair, tmp_path: Path
) -> None:
    out = tmp_path / "filtered.pcap"
    with veth_pair.enter("a"):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind((veth_pair.a.ip, 0))
    with veth_pair.enter("b"):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((veth_pair.b.ip, 9001))
        rx.setblocking(False)
    cap = CaptureThread(
        ifname=veth_pair.b.ifname, netns=veth_pair.b.netns, filter="udp dst port 9000",
        count=200, write=out, duration=20,
    )  # fmt: skip
    cap.start()
    kernel_got = 0
    sent = 0
    while cap.is_alive():
        tx.sendto(b"to-capture-%d" % sent, (veth_pair.b.ip, 9000))
        tx.sendto(b"to-kernel", (veth_pair.b.ip, 9001))
        sent += 1
        time.sleep(0.001)
        try:
            while rx.recv(2048) == b"to-kernel":
                kernel_got += 1
        except BlockingIOError:
            pass
    s = cap.summary()
    time.sleep(0.05)
    try:
        while rx.recv(2048) == b"to-kernel":
            kernel_got += 1
    except BlockingIOError:
        pass
    assert s["packets"] == 200
    _, frames = read_pcap(out)
    ports = {dpkt.ethernet.Ethernet(b).data.data.dport for _, b in frames}
    assert len(frames) == 200 and ports == {9000}
    # Every datagram to 9001 went to the kernel's socket, during the capture too.
    assert kernel_got == sent
    tx.close()
    rx.close()


def test_cli_prints_one_line_per_frame(veth_pair: VethPair) -> None:
    gen = TrafficGenerator(veth_pair, "a", size=60)
    gen.start(rate=10_000, duration=30)
    r = subprocess.run(
        [sys.executable, "-m", "kbypass.cli", "capture", veth_pair.b.ifname,
         "--netns", veth_pair.b.netns, "-c", "5", "--filter", "udp"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    gen.stop()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5, r.stdout
    for line in lines:
        assert line.endswith("UDP 198.18.0.1:10000 > 198.18.0.2:9000 len 60"), line
    assert "5 packets captured" in r.stderr and "stopped by count" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_flushes_a_valid_file_and_detaches(
    veth_pair: VethPair, tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "sig.pcap"
    gen = TrafficGenerator(veth_pair, "a", size=60)
    gen.start(rate=100_000, duration=60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbypass.cli", "capture", veth_pair.b.ifname,
         "--netns", veth_pair.b.netns, "-w", str(out), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        # Wait until frames are being written (the 1 MiB buffer has gone to the file once).
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 1 << 20):
            time.sleep(0.05)
        assert out.exists() and out.stat().st_size >= 1 << 20, proc.stderr
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        gen.stop()
    assert proc.returncode == 0, err
    import json

    summary = json.loads(err[err.index("{") :])
    assert summary["stopped"] == "signal"
    _, frames = read_pcap(out)  # a truncated record would raise
    assert len(frames) == summary["packets"] > 1000
    assert "prog/xdp" not in _programs(veth_pair)


def test_bad_input_raises_typed_errors(veth_pair: VethPair, tmp_path: Path) -> None:
    b = veth_pair.b
    with pytest.raises(ValueError, match="count"):
        kbypass.capture(b.ifname, netns=b.netns, count=0)
    with pytest.raises(ValueError):
        kbypass.capture(b.ifname, netns=b.netns, filter="udp dst port 99999", count=1)
    with pytest.raises(ValueError, match="queues"):
        kbypass.capture(b.ifname, netns=b.netns, queues="some", count=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue 3 does not exist"):
        kbypass.capture(b.ifname, netns=b.netns, queue=3, count=1)
    with pytest.raises(ValueError, match="frames=64 is too few"):
        kbypass.capture(b.ifname, netns=b.netns, count=1, frames=64)
    with pytest.raises(ValueError, match="interrupt"):
        kbypass.capture(b.ifname, netns=b.netns, count=1, interrupt="ignore")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        kbypass.capture("kbxnope0", netns=b.netns, count=1, duration=0.1)
    with pytest.raises(FileNotFoundError):
        kbypass.capture(b.ifname, netns=b.netns, count=1, write=tmp_path / "no" / "x.pcap")
    with pytest.raises(TypeError):
        kbypass.capture(b.ifname, netns=b.netns, count=1.5)  # type: ignore[arg-type]
    # Nothing was left attached by the failed attempts.
    assert "prog/xdp" not in _programs(veth_pair)
    s = kbypass.capture(b.ifname, netns=b.netns, duration=0.2, write=tmp_path / "empty.pcap")
    assert (s["stopped"], s["packets"]) == ("duration", 0)
    assert read_pcap(tmp_path / "empty.pcap")[1] == []
