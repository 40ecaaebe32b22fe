"""pytest plugin: ``veth_pair`` and ``traffic`` fixtures for testing packet processors.

Installed with kbypass (entry point ``pytest11``), so any test suite can ask for them::

    import kbypass

    def test_my_capture(veth_pair, traffic):
        with veth_pair.enter("b"):
            ...                                   # open sockets on veth_pair.b.ifname
        sent = traffic.run(count=10_000)          # UDP from side "a" to side "b"

* ``veth_pair`` -- a :class:`kbypass.testing.VethPair`: two network namespaces ``a``/``b``
  joined by veth0 (198.18.0.1) <-> veth1 (198.18.0.2), removed after the test even when it
  fails. Options: ``@pytest.mark.veth_pair(mtu=3000, queues=2, ...)`` (the
  :class:`~kbypass.testing.VethPair` keyword arguments).
* ``traffic`` -- a :class:`kbypass.testing.TrafficGenerator` on that pair sending from ``a`` to
  ``b`` (XDP live frames, millions of frames/s); stopped after the test. Options:
  ``@pytest.mark.traffic(size=1514, flows=8, ...)`` or, per parameter,
  ``@pytest.mark.parametrize("traffic", [{"size": 60}, {"size": 1514}], indirect=True)``.

Both skip with the reason when the test does not run as root or ``ip`` is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kbypass.testing import TrafficGenerator, VethPair

__all__ = ["traffic", "veth_pair"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers that configure the fixtures."""
    config.addinivalue_line(
        "markers",
        "veth_pair(**kwargs): options for the veth_pair fixture "
        "(mtu, queues, gro, subnet, ipv6: see kbypass.testing.VethPair)",
    )
    config.addinivalue_line(
        "markers",
        "traffic(**kwargs): options for the traffic fixture (size, flows, src_port, dst_port, "
        "udp_checksum, batch_size, cpu: see kbypass.testing.TrafficGenerator)",
    )


def missing_requirements() -> str | None:
    """Why the fixtures cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return (
            "kbypass veth_pair/traffic need root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to "
            "create network namespaces and load XDP programs: run pytest as root"
        )
    for tool, package in (("ip", "iproute2"),):
        if shutil.which(tool) is None:
            return f"kbypass veth_pair needs the `{tool}` command: apt-get install {package}"
    return None


def _marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    if marker is None:
        return {}
    if marker.args:
        raise TypeError(f"@pytest.mark.{name} takes keyword arguments only, got {marker.args}")
    return dict(marker.kwargs)


@pytest.fixture
def veth_pair(request: pytest.FixtureRequest) -> Iterator[VethPair]:
    """Return a fresh :class:`kbypass.testing.VethPair`, deleted after the test."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    from kbypass.testing import VethPair

    pair = VethPair(**_marker_kwargs(request, "veth_pair"))
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture
def traffic(veth_pair: VethPair, request: pytest.FixtureRequest) -> Iterator[TrafficGenerator]:
    """Return a :class:`kbypass.testing.TrafficGenerator` sending from ``a`` to ``b``."""
    from kbypass.testing import TrafficGenerator

    kwargs = _marker_kwargs(request, "traffic")
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, dict):
            raise TypeError(f"parametrize the traffic fixture with dicts of options, got {param!r}")
        kwargs.update(param)
    kwargs.pop("side", None)
    gen = TrafficGenerator(veth_pair, "a", **kwargs)
    try:
        yield gen
    finally:
        gen.close()
