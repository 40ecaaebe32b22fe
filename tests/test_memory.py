import gc
import os
import resource
from pathlib import Path

import numpy as np
import pytest

import kbypass
from _privileges import (
    CAP_IPC_LOCK,
    CAP_SYS_RESOURCE,
    as_nobody,
    available,
    has_capability,
    hugepages,
    in_child,
    locked_bytes,
)
from kbypass import HugeRegion, info

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

    def large_locked() -> tuple[str, tuple[int, int]]:
        try:
            HugeRegion(64 * MIB, hugepages="never")
        except OSError as e:
            return str(e), resource.getrlimit(resource.RLIMIT_MEMLOCK)
        raise AssertionError("locking 64 MiB under an 8 MiB hard limit succeeded")

    message, limits = as_nobody(large_locked)
    assert "ulimit -l" in message
    assert "lock=False" in message
    assert "hard limit" in message  # what is in the way, and that only it is
    assert limits == (8 * MIB, 8 * MIB)  # nothing was changed for the failed attempt

    def large_unlocked() -> bool:
        return HugeRegion(64 * MIB, hugepages="never", lock=False).locked

    assert as_nobody(large_unlocked) is False


def test_exported_from_package() -> None:
    assert kbypass.HugeRegion is HugeRegion


def _can_set_memlock_hard(hard: int) -> bool:
    """Whether a child of this process may set its hard RLIMIT_MEMLOCK to ``hard``."""
    parent_hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if has_capability(CAP_SYS_RESOURCE) or parent_hard == resource.RLIM_INFINITY:
        return True
    return hard != resource.RLIM_INFINITY and hard <= parent_hard


@root
@pytest.mark.parametrize(
    ("soft", "hard", "size"),
    [(MIB, 8 * MIB, 4 * MIB), (8 * MIB, resource.RLIM_INFINITY, 16 * MIB)],
    ids=["hard-8MiB", "hard-unlimited"],
)
def test_locking_past_the_soft_limit_raises_it_by_what_is_needed(
    soft: int, hard: int, size: int
) -> None:
    """The soft limit goes to what the process had locked plus the region: never unlimited."""
    if not _can_set_memlock_hard(hard):
        pytest.skip(
            "optional: this root has no CAP_SYS_RESOURCE and a lower hard RLIMIT_MEMLOCK, "
            "so it cannot give a child this hard limit"
        )

    def lock() -> tuple[int, int, tuple[int, int]]:
        before = locked_bytes()
        r = HugeRegion(size, hugepages="never")
        assert r.locked
        return before, r.size, resource.getrlimit(resource.RLIMIT_MEMLOCK)

    before, got, (soft_after, hard_after) = as_nobody(lock, memlock=soft, memlock_hard=hard)
    assert got == size
    assert soft_after != resource.RLIM_INFINITY
    assert soft_after == before + size
    assert hard_after == hard  # not raised: the soft limit fitted under it


@root
def test_a_raised_memlock_limit_is_reported_on_the_region_and_the_process() -> None:
    def lock_small_then_big() -> tuple[list[str], list[str], list[dict[str, int | None]], int]:
        small = HugeRegion(MIB // 2, hugepages="never")  # fits under 1 MiB: nothing to raise
        before = locked_bytes()
        big = HugeRegion(4 * MIB, hugepages="never")
        report = info.collect(["privileges"])["privileges"]
        assert report["memlock_raises"] == kbypass.memlock_raises()
        assert report["memlock_limit"] == before + 4 * MIB
        assert "(raised by kbypass 1x)" in info.SECTIONS["privileges"].summary(report)
        return small.notes, big.notes, kbypass.memlock_raises(), before

    small, big, raises, before = as_nobody(lock_small_then_big, memlock=MIB, memlock_hard=8 * MIB)
    assert small == []
    assert raises == [
        {
            "locked": before,
            "needed": 4 * MIB,
            "soft_before": MIB,
            "hard_before": 8 * MIB,
            "soft": before + 4 * MIB,
            "hard": 8 * MIB,
        }
    ]
    assert len(big) == 1
    assert big[0].startswith("RLIMIT_MEMLOCK raised from 1 MiB to ")
    assert "to lock 4 MiB" in big[0]


@root
def test_without_cap_ipc_lock_or_cap_sys_resource_the_hard_limit_stops_it_with_the_fix() -> None:
    def lock_4_mib() -> tuple[str, tuple[int, int]]:
        try:
            HugeRegion(4 * MIB, hugepages="never")
        except OSError as e:
            return str(e), resource.getrlimit(resource.RLIMIT_MEMLOCK)
        raise AssertionError("locking 4 MiB under a 1 MiB hard limit succeeded")

    # Root without CAP_IPC_LOCK is held to RLIMIT_MEMLOCK like anyone else.
    message, limits = in_child(
        lock_4_mib, memlock=(MIB, MIB), drop_caps=[CAP_IPC_LOCK, CAP_SYS_RESOURCE]
    )
    assert limits == (MIB, MIB)
    assert "hard limit 1 MiB" in message
    assert "CAP_SYS_RESOURCE" in message
    assert "lock=False" in message


@root
def test_with_cap_sys_resource_the_hard_limit_is_raised_to_what_is_needed_not_unlimited() -> None:
    if not has_capability(CAP_SYS_RESOURCE):
        pytest.skip("optional: this root has no CAP_SYS_RESOURCE (a container?)")

    def lock_4_mib() -> tuple[int, int, tuple[int, int]]:
        before = locked_bytes()
        r = HugeRegion(4 * MIB, hugepages="never")
        return before, r.size, resource.getrlimit(resource.RLIMIT_MEMLOCK)

    before, size, limits = in_child(lock_4_mib, memlock=(MIB, MIB), drop_caps=[CAP_IPC_LOCK])
    assert limits == (before + size, before + size)
