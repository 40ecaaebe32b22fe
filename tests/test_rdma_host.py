"""kbypass.rdma on the host: works (or explains itself) without any RDMA device."""

from __future__ import annotations

from kbypass import rdma


def test_devices_is_a_list_or_names_the_packages() -> None:
    try:
        devs = rdma.devices()
    except FileNotFoundError as e:
        assert "apt-get install rdma-core ibverbs-providers" in str(e)
        return
    assert isinstance(devs, list)
    for d in devs:
        assert d.name and d.uverbs.startswith("uverbs")
        assert repr(d).startswith("RdmaDevice(")
