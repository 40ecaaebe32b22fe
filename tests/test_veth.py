import os
import socket
import subprocess
import sys

import pytest

from kbypass import _core
from kbypass.testing import VethPair

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")


def _netns_exists(name: str) -> bool:
    return os.path.exists(f"/var/run/netns/{name}")


@root
def test_pair_pings_both_ways_and_is_removed_on_exit() -> None:
    with VethPair() as pair:
        assert _netns_exists(pair.a.netns) and _netns_exists(pair.b.netns)
        pair.run("a", "ping", "-c1", "-W2", pair.b.ip)
        pair.run("b", "ping", "-c1", "-W2", pair.a.ip)
        # static neighbours are installed, so no ARP is needed
        neigh = pair.run("a", "ip", "neigh", "show", pair.b.ip).stdout
        assert "PERMANENT" in neigh and pair.b.mac in neigh
        assert pair.gro("a") and pair.gro("b")
        pair.set_gro(pair.b, False)
        assert not pair.gro("b")
        pair.set_gro(pair.b, True)
        assert pair.gro("b")
    assert pair.closed
    assert not _netns_exists(pair.a.netns) and not _netns_exists(pair.b.netns)


@root
def test_namespaces_removed_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), VethPair() as pair:
        raise RuntimeError("boom")
    assert not _netns_exists(pair.a.netns)


@root
def test_enter_moves_only_this_thread_and_udp_crosses_the_pair() -> None:
    outside = _core.netns_inode()
    with VethPair(mtu=3000, queues=2) as pair:
        with pair.enter("b"):
            assert _core.netns_inode() != outside
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind((pair.b.ip, 9000))
            rx.settimeout(5)
        assert _core.netns_inode() == outside
        with pair.enter("a"):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.sendto(b"x" * 2000, (pair.b.ip, 9000))
        data, addr = rx.recvfrom(4096)
        assert data == b"x" * 2000 and addr[0] == pair.a.ip
        assert "mtu 3000" in pair.run("a", "ip", "link", "show", pair.a.ifname).stdout
        queues = os.listdir(f"/proc/{os.getpid()}/net/")  # sanity: procfs readable
        assert queues
        rx.close()
        tx.close()


@root
def test_cleanup_stale_removes_pairs_of_dead_processes() -> None:
    code = (
        "import os; from kbypass.testing import VethPair; p = VethPair(); "
        "print(p.a.netns, p.b.netns, flush=True); os._exit(0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names = out.stdout.split()
    assert all(_netns_exists(n) for n in names)  # os._exit skipped the finalizers
    removed = VethPair.cleanup_stale()
    assert set(names) <= set(removed)
    assert not any(_netns_exists(n) for n in names)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="mtu"):
        VethPair(mtu=10)
    with pytest.raises(ValueError, match=r"198\.18\.0\.0/15"):
        VethPair(subnet="10.0.0")
    with pytest.raises(ValueError, match="queues"):
        VethPair(queues=0)


def test_entering_a_missing_namespace_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError, match="ip netns add"):
        _core.NetnsEntry("kbx-no-such-namespace")
