import gc
import os
from pathlib import Path

import numpy as np
import pytest

import kbypass
from _privileges import as_nobody, available, hugepages
from kbypass import HugeRegion

MIB = 1 << 20
root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to reserve hugepages")


def _thp_enabled() -> bool:
    p = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return p.exists() and "[never]" not in p.read_text()


def test_never_gives_small_pages_rounded_up() -> None:
    r = HugeRegion(3 * 4096 + 1, hugepages="never")
    assert r.tier == "4k"
    assert r.page_size == os.sysconf("SC_PAGESIZE")
    assert r.size == len(r) == 4 * r.page_size
    assert r.huge_bytes == 0
    assert r.array.shape == (r.size,)
    assert r.array.dtype == np.uint8
    assert r.address % r.page_size == 0


def test_auto_small_request_stays_on_small_pages() -> None:
    r = HugeRegion(4096)
    assert r.tier == "4k"


def test_region_is_zeroed_writable_and_shared_between_views() -> None:
    r = HugeRegion(MIB, hugepages="never")
    a, b = r.array, r.array
    assert not a.any()
    a[123] = 42
    assert b[123] == 42
    assert r.random_reads(10_000) > 0


def test_views_outlive_the_region_object() -> None:
    r = HugeRegion(2 * MIB)
    a = r.array
    del r
    gc.collect()
    a[:] = 7  # would segfault if the mapping had gone
    assert int(a[-4096:].sum()) == 7 * 4096


def test_close_and_with_drop_only_our_reference() -> None:
    with HugeRegion(MIB, hugepages="never") as r:
        a = r.array
        a[0] = 1
    assert r.closed
    a[1] = 2
    assert a[:2].tolist() == [1, 2]
    with pytest.raises(RuntimeError, match="closed"):
        _ = r.array
    with pytest.raises(RuntimeError, match="closed"):
        r.random_reads(1)
    r.close()  # idempotent
    assert "closed" in repr(r)


@pytest.mark.parametrize(
    ("size", "exc", "match"),
    [
        (0, ValueError, "greater than zero"),
        (-1, ValueError, "greater than zero"),
        (1 << 62, ValueError, "larger than"),
        (1 << 100, ValueError, "larger than"),
        ("1M", TypeError, None),
        (1.5, TypeError, None),
    ],
)
def test_bad_sizes_are_refused(size: object, exc: type[Exception], match: str | None) -> None:
    with pytest.raises(exc, match=match):
        HugeRegion(size)  # type: ignore[arg-type]


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="require"):
        HugeRegion(MIB, hugepages="sometimes")
    with pytest.raises(ValueError, match="numa_node"):
        HugeRegion(MIB, numa_node=-1)
    with pytest.raises(ValueError, match="NUMA node 999"):
        HugeRegion(MIB, numa_node=999)
    with pytest.raises(ValueError, match="preferred"):
        HugeRegion(MIB, numa_policy="interleave")


@pytest.mark.parametrize("policy", ["bind", "preferred"])
def test_numa_node_zero(policy: str) -> None:
    r = HugeRegion(4 * MIB, numa_node=0, numa_policy=policy)
    assert r.numa_node == 0
    r.array[:] = 1


def test_thp_tier() -> None:
    if not _thp_enabled():
        pytest.skip("optional: transparent hugepages are disabled on this machine")
    r = HugeRegion(8 * MIB, hugepages="thp")
    assert r.tier == "thp"
    assert r.page_size == 2 * MIB
    assert r.address % (2 * MIB) == 0
    assert 0 < r.huge_bytes <= r.size


def test_require_fails_with_the_fix_when_no_pages_are_free() -> None:
    # Ask for one page more than is free, whatever other users of the machine hold.
    need = available(2048) + 1
    with pytest.raises(OSError, match="no free 2 MiB hugepages") as e:
        HugeRegion(need * 2 * MIB, hugepages="require")
    assert "nr_hugepages" in str(e.value) and "echo" in str(e.value)
    with pytest.raises(OSError, match=r'hugepages="2m"'):
        HugeRegion(need * 2 * MIB, hugepages="2m")


@root
def test_2m_tier_with_reserved_pages() -> None:
    with hugepages(2048, 3) as ok:
        assert ok, "the kernel could not reserve three 2 MiB pages"
        r = HugeRegion(5 * MIB, hugepages="require")
        assert r.tier == "2m"
        assert r.size == 6 * MIB
        assert r.huge_bytes == r.size
        assert r.locked
        a = r.array
        a[::4096] = 3
        del r
    assert int(a[::4096].sum()) == 3 * (6 * MIB // 4096)


@root
def test_1g_tier_with_a_reserved_page() -> None:
    with hugepages(1024 * 1024, 1) as ok:
        if not ok:
            pytest.skip("optional: the kernel found no contiguous free 1 GiB for a 1 GiB page")
        r = HugeRegion(1 << 30)
        assert r.tier == "1g"
        assert r.page_size == 1 << 30
        assert r.random_reads(100_000) > 0
        r.close()


@root
def test_auto_falls_back_below_1g_when_no_1g_pages() -> None:
    if available(1024 * 1024) > 0:
        pytest.skip("optional: someone holds free 1 GiB pages; the fallback is not observable")
    r = HugeRegion(512 * MIB, lock=False)
    assert r.tier in ("2m", "thp", "4k")


@root
def test_without_root_small_regions_work_and_large_locks_say_the_fix() -> None:
    def small() -> tuple[str, bool]:
        r = HugeRegion(MIB, hugepages="never")
        r.array[:] = 1
        return r.tier, r.locked

    assert as_nobody(small) == ("4k", True)

    def large_locked() -> None:
        HugeRegion(64 * MIB, hugepages="never")

    with pytest.raises(OSError, match="ulimit -l") as e:
        as_nobody(large_locked)
    assert "lock=False" in str(e.value)

    def large_unlocked() -> bool:
        return HugeRegion(64 * MIB, hugepages="never", lock=False).locked

    assert as_nobody(large_unlocked) is False


def test_exported_from_package() -> None:
    assert kbypass.HugeRegion is HugeRegion
