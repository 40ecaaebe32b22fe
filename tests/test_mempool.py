import gc
import os

import numpy as np
import pytest

import kbypass
from _privileges import hugepages
from kbypass import Mempool


def test_get_put_burst_and_bulk_semantics() -> None:
    with Mempool(100, 2048, hugepages="never") as pool:
        assert (pool.count, pool.size, pool.stride, len(pool)) == (100, 2048, 2048, 100)
        a = pool.get(64)
        assert a.dtype == np.uint32 and len(a) == 64 and len(set(a.tolist())) == 64
        assert len(pool.get_bulk(64)) == 0, "bulk: all or nothing"
        b = pool.get(64)
        assert len(b) == 36, "burst: what is left"
        assert pool.available == 0 and pool.in_use == 100
        assert sorted(np.concatenate([a, b]).tolist()) == list(range(100))
        pool.put(a)
        pool.put(b)
        s = pool.stats()
        assert s["available"] == 100 and s["in_use"] == 0
        assert s["gets"] == 100 and s["puts"] == 100 and s["get_failures"] == 2


def test_double_put_and_foreign_index_are_refused_and_change_nothing() -> None:
    pool = Mempool(16, 64, hugepages="never")
    idx = pool.get(4)
    pool.put(idx[:2])
    with pytest.raises(ValueError, match="already free"):
        pool.put(idx)
    assert pool.in_use == 2
    with pytest.raises(ValueError, match="not from this pool"):
        pool.put(np.array([16], dtype=np.uint32))
    with pytest.raises(ValueError, match="not from this pool"):
        pool.put([-1])
    with pytest.raises(ValueError, match="already free"):
        pool.put(np.array([idx[2], idx[2]]))
    assert pool.in_use == 2
    pool.put(idx[2:].astype(np.int64))  # any integer dtype works
    # the negative index is refused while converting, before the pool sees it
    assert pool.in_use == 0 and pool.stats()["refused_puts"] == 3


def test_views_are_zero_copy_and_outlive_the_pool() -> None:
    pool = Mempool(8, 100, hugepages="never")
    assert pool.stride == 128
    arr = pool.array
    assert arr.shape == (8, 100) and arr.strides == (128, 1)
    v = pool.view(3)
    v[:3] = [7, 8, 9]
    assert arr[3, :3].tolist() == [7, 8, 9]
    pool.close()
    del pool
    gc.collect()
    arr[3, 99] = 1  # still mapped: the views hold the memory
    assert v[:3].tolist() == [7, 8, 9]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        Mempool(0, 64)
    with pytest.raises(ValueError, match="greater than zero"):
        Mempool(8, -1)
    with pytest.raises(ValueError, match="hugepages"):
        Mempool(8, 64, hugepages="huge")
    pool = Mempool(8, 64, hugepages="never")
    with pytest.raises(ValueError, match="at most 8"):
        pool.get(9)
    with pytest.raises(ValueError, match=">= 0"):
        pool.get(-1)
    with pytest.raises(TypeError, match="integer"):
        pool.put(np.array([1.0]))
    with pytest.raises(ValueError, match="out of range"):
        pool.view(8)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.get(1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to reserve hugepages")
def test_pool_on_2m_hugepages() -> None:
    with hugepages(2048, 4) as found:
        if not found:
            pytest.skip("optional: the kernel found no free 2 MiB pages to reserve")
        pool = kbypass.Mempool(2048, 2048, hugepages="require")
        assert pool.tier == "2m"
        idx = pool.get(2048)
        pool.array[idx] = 0xAB
        assert int(pool.array[idx[5], 2047]) == 0xAB
        pool.put(idx)
        pool.close()
