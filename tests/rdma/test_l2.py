"""The VM's L2 segment: rxe1 in the VM and a host namespace on one Ethernet link.

This is the interop rig of a host-side RoCEv2 peer: the VM's second NIC (eth1, rxe1) sits on a
tap bridged to a veth whose other end is in a host namespace. Checked here: both namespaces
and their devices, both directions of IP traffic over the bridge, rxe1's IPv4-mapped GID, real
RoCEv2 frames from rxe arriving in the host namespace (through the fixture generator), and the
teardown of everything, after a failure too.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from rxe_fixtures import FAKE_QPN, SCENARIOS, capture, gid_index, mapped_gid

from kbypass.testing.rxe_vm import CommandResult, L2Segment, RxeVm, RxeVmError


def ok(r: CommandResult) -> CommandResult:
    assert r.returncode == 0, f"{r.command!r} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/var/run/netns/{name}")


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the L2 segment creates namespaces, a bridge and a tap: needs root"
)


# --- with the VM --------------------------------------------------------------------------------


def test_host_namespace_pings_the_vm_over_the_bridge(rxe_vm_l2: RxeVm) -> None:
    seg = rxe_vm_l2.l2
    assert seg is not None
    r = seg.run("ping", "-c", "3", "-W", "10", seg.guest_ip)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 received" in r.stdout, r.stdout


def test_vm_pings_the_host_namespace_over_eth1(rxe_vm_l2: RxeVm) -> None:
    seg = rxe_vm_l2.l2
    assert seg is not None
    out = ok(rxe_vm_l2.run(f"ping -c 2 -W 10 -I eth1 {seg.host_ip}")).stdout
    assert "2 received" in out, out
    # The frames cross the bridge: the VM learnt nothing by ARP, its entry is the permanent one.
    neigh = ok(rxe_vm_l2.run(f"ip neigh show {seg.host_ip} dev eth1")).stdout
    assert f"lladdr {seg.host_mac} PERMANENT" in neigh, neigh


def test_rxe1_is_active_on_eth1_with_the_ipv4_mapped_gid(rxe_vm_l2: RxeVm) -> None:
    seg = rxe_vm_l2.l2
    assert seg is not None
    links = ok(rxe_vm_l2.run("rdma link show")).stdout
    assert re.search(r"link rxe1/1 state ACTIVE physical_state LINK_UP netdev eth1", links), links
    assert re.search(r"link rxe0/1 state ACTIVE .* netdev eth0", links), links
    info = ok(rxe_vm_l2.run("ibv_devinfo -v -d rxe1")).stdout
    assert re.search(rf"GID\[\s*1\]:\s+::ffff:{re.escape(seg.guest_ip)}, RoCE v2$", info, re.M)
    assert gid_index(rxe_vm_l2, "rxe1", seg.guest_ip) == 1
    # sysfs agrees: the GID's 16 bytes as eight groups, of type RoCE v2, on eth1.
    port = "/sys/class/infiniband/rxe1/ports/1"
    r = ok(rxe_vm_l2.run(f"cat {port}/gids/1 {port}/gid_attrs/types/1 {port}/gid_attrs/ndevs/1"))
    gid, kind, ndev = r.stdout.splitlines()
    raw = mapped_gid(seg.guest_ip).hex()
    assert gid == ":".join(raw[i : i + 4] for i in range(0, 32, 4)), gid
    assert (kind, ndev) == ("RoCE v2", "eth1")
    mac = ok(rxe_vm_l2.run("cat /sys/class/net/eth1/address")).stdout.strip()
    assert mac == seg.guest_mac


def test_rxe_requests_reach_the_host_namespace(rxe_vm_l2: RxeVm, tmp_path: Path) -> None:
    """A UD SEND from rxe1 is captured in the host namespace (the fixture generator's path)."""
    scenario = next(s for s in SCENARIOS if s.name == "ud_send")
    out = capture(rxe_vm_l2, scenario, tmp_path / "ud_send.pcap", timeout=60)
    fields = subprocess.run(
        ["tshark", "-r", str(out), "-T", "fields", "-E", "separator=|",
         "-e", "ip.src", "-e", "ip.dst", "-e", "infiniband.bth.opcode",
         "-e", "infiniband.bth.destqp", "-e", "infiniband.deth.q_key"],
        capture_output=True, text=True, check=True,
    ).stdout.split("|")  # fmt: skip
    seg = rxe_vm_l2.l2
    assert seg is not None
    src, dst, opcode, qpn, qkey = (f.strip() for f in fields)
    assert (src, dst) == (seg.guest_ip, seg.host_ip)
    assert (int(opcode, 0), int(qpn, 0), int(qkey, 0)) == (0x64, FAKE_QPN, 0x11111111)


def test_the_existing_rxe0_rig_is_unchanged(rxe_vm_l2: RxeVm) -> None:
    """rxe0 on eth0 (qemu's user network) still works next to rxe1: RC ping-pong over it."""
    pp = "timeout 60 ibv_rc_pingpong -d rxe0 -g 1 -n 20"
    server = rxe_vm_l2.start(pp, timeout=90)
    client = rxe_vm_l2.run(
        f"for i in $(seq 50); do {pp} 127.0.0.1 && exit 0; sleep 0.2; done; exit 1", timeout=90
    )
    ok(client)
    ok(server.wait())
    assert "20 iters in" in client.stdout


# --- the segment alone (root, no VM) ------------------------------------------------------------


@needs_root
def test_segment_devices_addresses_and_teardown() -> None:
    with L2Segment(subnet="198.19.7") as seg:
        assert netns_exists(seg.bridge_netns) and netns_exists(seg.host_netns)
        assert (seg.host_ip, seg.guest_ip) == ("198.19.7.1", "198.19.7.2")
        links = seg.run("ip", "-d", "-o", "link", side="bridge").stdout
        for dev, kind in ((seg.tap, "tun type tap"), (seg.bridge_port, "veth")):
            line = next(ln for ln in links.splitlines() if re.match(rf"\d+: {dev}[:@]", ln))
            assert f"master {seg.bridge}" in line and kind in line, line
        addrs = seg.run("ip", "-o", "-4", "addr", "show", "dev", seg.host_ifname).stdout
        assert f"inet {seg.host_ip}/24" in addrs, addrs
        mac = seg.run("cat", f"/sys/class/net/{seg.host_ifname}/address").stdout.strip()
        assert mac == seg.host_mac
        neigh = seg.run("ip", "neigh", "show", seg.guest_ip).stdout
        assert f"lladdr {seg.guest_mac} PERMANENT" in neigh, neigh
        v6 = seg.run("sysctl", "-n", "net.ipv6.conf.all.disable_ipv6").stdout.strip()
        assert v6 == "1"
        assert "closed" not in repr(seg) and seg.host_netns in repr(seg)
    assert seg.closed and "closed" in repr(seg)
    assert not netns_exists(seg.bridge_netns) and not netns_exists(seg.host_netns)
    seg.close()  # idempotent


@needs_root
def test_segment_is_removed_when_the_block_fails() -> None:
    names: list[str] = []
    with pytest.raises(KeyError), L2Segment() as seg:
        names += [seg.bridge_netns, seg.host_netns]
        raise KeyError("a failing test")
    assert names and not any(netns_exists(n) for n in names)


@needs_root
def test_stale_segments_of_a_dead_process_are_cleaned_up() -> None:
    # A PID that does not exist: a process we started and waited for.
    p = subprocess.Popen(["true"])
    p.wait()
    name = f"kbx-{p.pid}-0-rxehost"
    if os.path.exists(f"/proc/{p.pid}"):
        pytest.skip("the PID was reused at once")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in L2Segment.cleanup_stale()
        assert not netns_exists(name)
    finally:
        if netns_exists(name):
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_segment_refuses_addresses_outside_the_benchmark_range() -> None:
    for bad in ("10.0.0", "198.20.1", "198.18", "198.18.0", "198.18.256"):
        with pytest.raises(ValueError, match=r"198\.18\.0\.0/15"):
            L2Segment(subnet=bad)


@needs_root
def test_a_failed_boot_leaves_no_namespace_or_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    from kbypass.testing.rxe_vm import missing_host_tools

    if missing_host_tools():
        pytest.skip("the soft-RoCE VM needs: " + ", ".join(missing_host_tools()))
    # TCG only: a KVM boot that times out would be recorded as "KVM broken" in the cache.
    monkeypatch.setenv("KBYPASS_RXE_ACCEL", "tcg")
    said: list[str] = []
    vm = RxeVm(l2=True, boot_timeout=0.5, log=said.append)
    with pytest.raises(RxeVmError, match="not ready"):
        vm.boot()
    assert vm.l2 is None and vm.pid is None
    text = "\n".join(said)
    netns = re.findall(r"\b(kbx-\d+-\d+-rxe(?:br|host))\b", text)
    pids = [int(p) for p in re.findall(r"qemu pid (\d+)", text)]
    assert len(set(netns)) == 2 and len(pids) == 1, text
    assert not any(netns_exists(n) for n in netns)
    assert not os.path.exists(f"/proc/{pids[0]}"), f"qemu {pids[0]} still runs"
