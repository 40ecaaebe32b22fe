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


def test_endpoint_record_round_trips_and_pickles() -> None:
    import pickle

    ep = rdma.Endpoint(
        0xABCDEF, 0x123456, "::ffff:198.18.0.15", lid=7, rkey=0xDEADBEEF, addr=1 << 40, length=4096
    )
    wire = ep.to_bytes()
    assert len(wire) == 52 and wire[:4] == b"KBE1"
    assert wire[4:8] == bytes([0, 0xAB, 0xCD, 0xEF]) and wire[32:36] == bytes.fromhex("deadbeef")
    back = rdma.Endpoint.from_bytes(wire)
    assert back == ep and (back.rkey, back.addr, back.length) == (0xDEADBEEF, 1 << 40, 4096)
    assert pickle.loads(pickle.dumps(ep)) == ep
    # the pingpong format carries no RDMA buffer: those fields come back as zero
    assert rdma.Endpoint.from_pingpong(ep.to_pingpong()) == rdma.Endpoint(
        0xABCDEF, 0x123456, "::ffff:198.18.0.15", lid=7
    )
    for bad in (wire[:-1], b"KBE2" + wire[4:], b""):
        try:
            rdma.Endpoint.from_bytes(bad)
        except ValueError as e:
            assert "to_bytes()" in str(e)
        else:
            raise AssertionError(f"from_bytes accepted {bad!r}")


def test_status_names_follow_ibv_wc_status() -> None:
    assert rdma.Status(0).name == "SUCCESS"
    assert rdma.Status.REM_ACCESS_ERR == 10 and rdma.Status.WR_FLUSH_ERR == 5
    assert rdma.Status.RNR_RETRY_EXC_ERR == 13 and len(rdma.Status) == 24
    assert issubclass(rdma.CompletionError, OSError)
