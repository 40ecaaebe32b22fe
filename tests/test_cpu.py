import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kbypass import cpu


def test_topology_is_consistent() -> None:
    t = cpu.topology()
    assert t.online and set(t.allowed) <= set(t.online)
    assert set(t.isolated) <= set(t.online)
    assert {c.id for c in t.cpus} == set(t.online)
    assert all(c.id in c.siblings for c in t.cpus)
    assert sorted(x for core in t.cores for x in core.cpus) == sorted(t.online)
    assert sorted(x for cpus in t.packages.values() for x in cpus) == sorted(t.online)
    if Path("/sys/devices/system/node/node0").exists():
        assert t.nodes
        for node, cpus in t.nodes.items():
            assert all(t.node_of(c) == node for c in cpus)
    assert t.node_of(10_000) is None


def test_allowed_matches_os() -> None:
    assert cpu.allowed() == sorted(os.sched_getaffinity(0))


def test_pin_and_restore() -> None:
    before = cpu.allowed()
    target = before[-1]
    with cpu.pinned(target) as previous:
        assert previous == before
        assert cpu.allowed() == [target]
        assert os.sched_getaffinity(0) == {target}
    assert cpu.allowed() == before


def test_pinned_restores_after_an_exception() -> None:
    before = cpu.allowed()
    with pytest.raises(KeyError), cpu.pinned([before[0]]):
        raise KeyError("boom")
    assert cpu.allowed() == before


def test_pin_is_per_thread() -> None:
    before = cpu.allowed()
    seen: list[list[int]] = []

    def worker() -> None:
        cpu.pin(before[0])
        seen.append(cpu.allowed())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [[before[0]]]
    assert cpu.allowed() == before


@pytest.mark.parametrize(
    ("cpus", "exc", "match"),
    [
        ([], ValueError, "at least one CPU"),
        (-1, ValueError, ">= 0"),
        (100_000, ValueError, "not online"),
        ([0, 4096], ValueError, "not online"),
        ("0", TypeError, "ints"),
        (True, TypeError, "bool"),
        ([0.5], TypeError, "ints"),
    ],
)
def test_bad_pins_are_refused(cpus: object, exc: type[Exception], match: str) -> None:
    before = cpu.allowed()
    with pytest.raises(exc, match=match):
        cpu.pin(cpus)  # type: ignore[arg-type]
    assert cpu.allowed() == before


def test_interfaces_errors() -> None:
    with pytest.raises(FileNotFoundError, match="ip link"):
        cpu.nic_numa_node("kbp-nosuch0")
    with pytest.raises(FileNotFoundError):
        cpu.queue_irqs("kbp-nosuch0")
    with pytest.raises(FileNotFoundError):
        cpu.worker_cpu("kbp-nosuch0")
    for bad in ("", "a/b", "..", "x" * 16, "has space"):
        with pytest.raises(ValueError, match="interface name"):
            cpu.nic_numa_node(bad)
    with pytest.raises(ValueError, match=">= 0"):
        cpu.worker_cpu("lo", -1)


def test_loopback_is_virtual() -> None:
    assert cpu.nic_numa_node("lo") is None
    assert cpu.queue_irqs("lo") == []
    assert cpu.worker_cpu("lo") in cpu.allowed()


def _hardware_nic() -> str | None:
    for d in sorted(Path("/sys/class/net").iterdir()):
        if (d / "device").exists():
            return d.name
    return None


def test_hardware_nic_irqs_when_present() -> None:
    nic = _hardware_nic()
    if nic is None:
        pytest.skip("optional: this machine has no NIC with a device behind it")
    node = cpu.nic_numa_node(nic)
    assert node is None or node in cpu.topology().nodes
    irqs = cpu.queue_irqs(nic)
    online = set(cpu.topology().online)
    for q in irqs:
        assert q.irq > 0 and q.name
        assert set(q.effective) <= online
        assert q.queue is None or q.queue.split("-")[0] in ("rx", "tx", "combined")
    w = cpu.worker_cpu(nic, 0)
    assert w in cpu.allowed()
    rx_cpus = {c for q in irqs if q.queue in ("rx-0", "combined-0") for c in q.effective}
    if rx_cpus and len(rx_cpus) < len(cpu.allowed()):
        assert w not in rx_cpus


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace")
def test_veth_in_a_namespace_has_no_irqs_and_no_node() -> None:
    ns = f"kbp-cpu-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "kv0", "type", "veth", "peer", "name", "kv1"],
            check=True,
        )
        code = (
            "from kbypass import cpu; "
            "print(cpu.nic_numa_node('kv0'), cpu.queue_irqs('kv0'), "
            "cpu.worker_cpu('kv0') in cpu.allowed())"
        )
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["None", "[]", "True"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
