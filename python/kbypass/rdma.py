"""RDMA through the verbs API, with libibverbs loaded at run time.

kbypass needs no rdma-core to build or import; on a machine without libibverbs,
:func:`devices` and :class:`Context` raise :class:`FileNotFoundError` naming the packages to
install, and on one without RDMA hardware or soft-RoCE :func:`devices` returns an empty list.
Without kernel RDMA at all, ``Context.userspace(interface, queue=0, ip=..., netns=None)`` runs
the same objects over kbypass's user-space RoCEv2 engine (an AF_XDP socket, wire-compatible
with rxe); ``ctx.is_userspace`` tells them apart, :func:`devices` lists open ones as
``kbx-<interface>``, and closing such a context closes its children and releases the engine.

The objects follow verbs (and pyverbs): ``Context`` → ``alloc_pd()`` → ``register(buffer)``,
``create_cq()`` → ``create_qp()``. Each is a context manager; ``close()`` releases the Python
object's hold, and a parent's kernel object lives until its last child is closed too, so any
close or drop order is safe.

``register`` takes any writable C-contiguous buffer, a ``kbypass.HugeRegion`` (whole) or a
``kbypass.Mempool`` (its objects; object ``i`` at offset ``i * pool.stride``), and keeps that
memory alive while the region is registered. Failed completions have a named
:class:`Status`; ``wc.check()`` raises :data:`CompletionError` (an OSError) when asked.
Connections: ``qp.connect(endpoint)`` with an :class:`Endpoint` exchanged any way you like
(``to_bytes``/``from_bytes``, pickle, or ``ibv_rc_pingpong``'s text form), the tools' own TCP
exchanges (``qp.pingpong_accept``/``pingpong_connect`` for ``ibv_rc_pingpong``;
``qp.perftest_serve(mr, test=...)`` as the server of ``ib_write_bw``, ``ib_read_bw``,
``ib_send_bw`` or ``ib_atomic_bw``, and ``qp.perftest_write_bw``/``perftest_read_bw``/
``perftest_send_bw``/``perftest_atomic_bw`` as their client), or the RDMA connection manager
(``qp.cm_accept``/``cm_connect``, librdmacm loaded at run time).

Example (RC loopback on one device, as in the soft-RoCE VM)::

    import numpy as np
    from kbypass import rdma

    with rdma.Context("rxe0") as ctx:
        pd, cq = ctx.alloc_pd(), ctx.create_cq(64)
        src, dst = np.arange(16, dtype=np.uint8), np.zeros(16, dtype=np.uint8)
        a, b = pd.create_qp("RC", cq), pd.create_qp("RC", cq)
        a.connect(b.endpoint(psn=2), psn=1)
        b.connect(a.endpoint(psn=1), psn=2)
        mr_src, mr_dst = pd.register(src), pd.register(dst)
        a.write(mr_src, mr_dst.addr, mr_dst.rkey)
        while not (wc := cq.poll()):
            pass
        assert wc[0].status_name == "SUCCESS" and (dst == src).all()
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt

from kbypass._core.rdma import (
    AddressHandle,
    CmConnection,
    CompletionError,
    CompletionQueue,
    Context,
    Endpoint,
    MemoryRegion,
    Port,
    ProtectionDomain,
    QueuePair,
    RdmaDevice,
    SharedReceiveQueue,
    WorkCompletion,
    devices,
    write_bandwidth,
    write_latency,
)

__all__ = [
    "DEFAULT_QKEY",
    "WC_DTYPE",
    "Access",
    "AddressHandle",
    "CmConnection",
    "CompletionError",
    "CompletionQueue",
    "Context",
    "Endpoint",
    "MemoryRegion",
    "Opcode",
    "Port",
    "ProtectionDomain",
    "QueuePair",
    "RdmaDevice",
    "SharedReceiveQueue",
    "Status",
    "WcFlags",
    "WorkCompletion",
    "completion_array",
    "devices",
    "measure_write_bandwidth",
    "measure_write_latency",
]

#: The Q_Key UD queue pairs get from ``connect()`` and UD sends use by default.
DEFAULT_QKEY = 0x11111111


class Access(enum.IntFlag):
    """Memory and QP access rights (``enum ibv_access_flags``)."""

    LOCAL_WRITE = 1
    REMOTE_WRITE = 2
    REMOTE_READ = 4
    REMOTE_ATOMIC = 8
    ALL = 15


class Status(enum.IntEnum):
    """Work completion statuses (``enum ibv_wc_status``).

    ``WorkCompletion.status_name`` is the member's name; ``WorkCompletion.check()`` raises
    :data:`CompletionError` for anything but SUCCESS.

    Example::

        if Status(wc.status) is Status.REM_ACCESS_ERR:
            print("the peer refused our rkey")
    """

    SUCCESS = 0
    LOC_LEN_ERR = 1
    LOC_QP_OP_ERR = 2
    LOC_EEC_OP_ERR = 3
    LOC_PROT_ERR = 4
    WR_FLUSH_ERR = 5
    MW_BIND_ERR = 6
    BAD_RESP_ERR = 7
    LOC_ACCESS_ERR = 8
    REM_INV_REQ_ERR = 9
    REM_ACCESS_ERR = 10
    REM_OP_ERR = 11
    RETRY_EXC_ERR = 12
    RNR_RETRY_EXC_ERR = 13
    LOC_RDD_VIOL_ERR = 14
    REM_INV_RD_REQ_ERR = 15
    REM_ABORT_ERR = 16
    INV_EECN_ERR = 17
    INV_EEC_STATE_ERR = 18
    FATAL_ERR = 19
    RESP_TIMEOUT_ERR = 20
    GENERAL_ERR = 21
    TM_ERR = 22
    TM_RNDV_INCOMPLETE = 23


class Opcode(enum.IntEnum):
    """Work completion opcodes (``enum ibv_wc_opcode``)."""

    SEND = 0
    RDMA_WRITE = 1
    RDMA_READ = 2
    COMP_SWAP = 3
    FETCH_ADD = 4
    RECV = 128
    RECV_RDMA_WITH_IMM = 129


class WcFlags(enum.IntFlag):
    """Work completion flags (``enum ibv_wc_flags``), as in ``WorkCompletion.wc_flags``.

    With ``WITH_IMM``, ``WorkCompletion.imm`` holds the immediate data; with ``WITH_INV`` (a
    SEND with invalidate arrived), ``WorkCompletion.invalidated_rkey`` holds the R_Key it
    invalidated. In a :data:`WC_DTYPE` record both share ``imm_data``: the immediate in network
    byte order, the invalidated R_Key in host order (``wc["imm_data"].byteswap()``).

    Example::

        if WcFlags.WITH_INV in WcFlags(wc.wc_flags):
            print(f"the peer invalidated {wc.invalidated_rkey:#x}")
    """

    GRH = 1
    WITH_IMM = 2
    IP_CSUM_OK = 4
    WITH_INV = 8


#: One ``struct ibv_wc`` (48 bytes), for bulk polling with :meth:`CompletionQueue.poll_into`.
#: ``imm_data`` is in network byte order, as the wire carries it.
WC_DTYPE = np.dtype(
    {
        "names": [
            "wr_id",
            "status",
            "opcode",
            "vendor_err",
            "byte_len",
            "imm_data",
            "qp_num",
            "src_qp",
            "wc_flags",
            "pkey_index",
            "slid",
            "sl",
            "dlid_path_bits",
        ],
        "formats": [
            "<u8",
            "<i4",
            "<i4",
            "<u4",
            "<u4",
            ">u4",
            "<u4",
            "<u4",
            "<u4",
            "<u2",
            "<u2",
            "u1",
            "u1",
        ],
        "offsets": [0, 8, 12, 16, 20, 24, 28, 32, 36, 40, 42, 44, 45],
        "itemsize": 48,
    }
)


def completion_array(n: int) -> npt.NDArray[np.void]:
    """Return a zeroed array of ``n`` work completions to pass to ``CompletionQueue.poll_into``.

    Example::

        wcs = completion_array(64)
        got = cq.poll_into(wcs)
        ok = wcs[:got]["status"] == 0
    """
    if n < 1:
        raise ValueError(f"need at least one completion slot, got {n}")
    return np.zeros(n, dtype=WC_DTYPE)


def measure_write_bandwidth(
    qp: QueuePair,
    cq: CompletionQueue,
    mr: MemoryRegion,
    remote_addr: int,
    rkey: int,
    size: int = 65536,
    iterations: int = 5000,
    depth: int = 128,
    signal_every: int = 100,
) -> float:
    """RDMA-write ``iterations`` messages like ``ib_write_bw`` does; return MB/s (10^6 B/s).

    The loop runs in Rust with the GIL released, ``depth`` writes in flight and a completion
    every ``signal_every`` writes (perftest's defaults); Ctrl-C (KeyboardInterrupt) stops it.

    Example::

        mbps = measure_write_bandwidth(qp, cq, mr, peer_mr.addr, peer_mr.rkey, size=65536)
    """
    nbytes, seconds = write_bandwidth(
        qp, cq, mr, remote_addr, rkey, size, iterations, depth, signal_every
    )
    return nbytes / seconds / 1e6


def measure_write_latency(
    a: QueuePair,
    b: QueuePair,
    cq_a: CompletionQueue,
    cq_b: CompletionQueue,
    mr_a: MemoryRegion,
    mr_b: MemoryRegion,
    size: int = 2,
    iterations: int = 1000,
) -> list[float]:
    """Ping-pong RDMA writes between two connected QPs like ``ib_write_lat``.

    Each QP is driven by its own thread (GIL released) and needs its own CQ; each region
    holds at least ``2 * size`` bytes (send area, then landing area). Returns the one-way
    latency of each iteration in microseconds (half a round trip). Ctrl-C (KeyboardInterrupt)
    stops both threads.

    Example::

        samples = measure_write_latency(a, b, cq_a, cq_b, mr_a, mr_b, size=2)
        typical = sorted(samples)[len(samples) // 2]
    """
    return write_latency(a, b, cq_a, cq_b, mr_a, mr_b, size, iterations)
