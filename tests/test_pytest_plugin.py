"""The pytest11 plugin (``kbypass.testing.pytest_plugin``): a user's test file run by pytester."""

from __future__ import annotations

import os
from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import os, socket, time

import pytest

import kbypass
from kbypass.testing import TrafficGenerator, VethPair

SEEN = []


def test_pair_and_generator(veth_pair, traffic):
    assert isinstance(veth_pair, VethPair) and not veth_pair.closed
    assert isinstance(traffic, TrafficGenerator)
    assert traffic.end is veth_pair.a and traffic.peer is veth_pair.b
    SEEN.append(veth_pair.a.netns)
    with veth_pair.enter("b"):
        sock = kbypass.XdpSocket(veth_pair.b.ifname, mode="copy", filter="udp dst port 9000")
    with sock:
        sent = traffic.run(count=500, rate=100_000)
        got = 0
        deadline = time.monotonic() + 5
        while got < 500 and time.monotonic() < deadline:
            with sock.recv(max=64, timeout=0.2) as batch:
                got += len(batch)
    assert sent.packets == got == 500


@pytest.mark.veth_pair(mtu=3000, queues=2)
@pytest.mark.traffic(size=2000, dst_port=7000)
def test_markers_configure_the_fixtures(veth_pair, traffic):
    assert veth_pair.mtu == 3000 and veth_pair.queues == 2
    assert traffic.size == 2000 and traffic.frame[36:38] == (7000).to_bytes(2, "big")
    SEEN.append(veth_pair.a.netns)


@pytest.mark.parametrize("traffic", [{"size": 60}, {"size": 1514}], indirect=True)
def test_indirect_parametrize(traffic):
    assert traffic.size in (60, 1514)


def test_failure_still_cleans_up(veth_pair):
    SEEN.append(veth_pair.a.netns)
    raise AssertionError("a failing user test")


def test_namespaces_are_gone():
    assert len(SEEN) == 3
    for name in SEEN:
        assert not os.path.exists(f"/var/run/netns/{name}"), name
"""


def test_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    eps = {e.name: e.value for e in entry_points(group="pytest11")}
    assert eps.get("kbypass") == "kbypass.testing.pytest_plugin"
    assert eps.get("kbypass-rxe") == "kbypass.testing.pytest_rxe"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the fixtures create namespaces")
def test_user_tests_get_working_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    r.assert_outcomes(passed=5, failed=1)
    r.stdout.fnmatch_lines(["*test_failure_still_cleans_up FAILED*"])


def test_not_root_skips_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        def test_needs_pair(veth_pair):
            raise AssertionError("must not run")

        def test_needs_traffic(traffic):
            raise AssertionError("must not run")
        """
    )
    if os.geteuid() == 0:
        # Make the user's session look unprivileged: the fixtures must skip, saying why.
        pytester.makeconftest(
            """
            import os
            os.geteuid = lambda: 65534
            """
        )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    r.assert_outcomes(skipped=2)
    r.stdout.fnmatch_lines(["*need root*run pytest as root*"])


def test_markers_are_documented(pytester: pytest.Pytester) -> None:
    r = pytester.runpytest_subprocess("--markers")
    r.stdout.fnmatch_lines(["@pytest.mark.veth_pair(**kwargs)*", "@pytest.mark.traffic(**kwargs)*"])
