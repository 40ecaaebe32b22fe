"""Frames as data: parsed header columns, in-place edits, checksums and pcap files.

Frames are rows of a 2-D ``uint8`` array with a ``lengths`` vector (the layout a
:class:`~kbypass.Batch` uses too). Parsing is done in Rust and never reads past a frame's length;
short or inconsistent frames are *flagged* in ``flags`` rather than guessed at.

Example::

    import numpy as np
    from kbypass import packet

    frames, lengths = packet.frames_from_bytes([raw1, raw2])
    hdr = packet.parse(frames, lengths)
    udp9000 = (hdr["proto"] == packet.IPPROTO_UDP) & (hdr["dst_port"] == 9000)
    packet.edit(frames, lengths, swap_macs=True, swap_ips=True, swap_ports=True, mask=udp9000)
    with packet.PcapWriter("out.pcap") as w:
        w.write_rows(frames, lengths)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from kbypass import _core
from kbypass._core import PcapWriter

__all__ = [
    "EDIT_FIX_IPV4_CHECKSUM",
    "EDIT_FIX_L4_CHECKSUM",
    "EDIT_SWAP_IPS",
    "EDIT_SWAP_MACS",
    "EDIT_SWAP_PORTS",
    "FLAG_FRAGMENT",
    "FLAG_IP_OPTIONS",
    "FLAG_L4",
    "FLAG_MALFORMED",
    "FLAG_TRUNCATED",
    "FLAG_VLAN",
    "IPPROTO_ICMP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "META_DTYPE",
    "PcapWriter",
    "checksums_ok",
    "edit",
    "frames_from_bytes",
    "parse",
]

FLAG_VLAN = 1 << 0
"""The frame had an 802.1Q/802.1ad tag; ``vlan`` holds the outer id."""
FLAG_TRUNCATED = 1 << 1
"""The frame ends before a header it announces (IP, extension header, the whole L4 header)."""
FLAG_MALFORMED = 1 << 2
"""A header is inconsistent: IPv4 IHL < 5, IP length < header, TCP offset < 5, or an IP
length too short for the extension or L4 header it announces."""
FLAG_FRAGMENT = 1 << 3
"""An IP fragment; ports are parsed only for the first fragment."""
FLAG_IP_OPTIONS = 1 << 4
"""IPv4 options or IPv6 extension headers are present."""
FLAG_L4 = 1 << 5
"""UDP/TCP/SCTP ports were parsed: the whole L4 header lies inside the IP datagram and frame."""

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

EDIT_SWAP_MACS = 1
EDIT_SWAP_IPS = 2
EDIT_SWAP_PORTS = 4
EDIT_FIX_IPV4_CHECKSUM = 8
EDIT_FIX_L4_CHECKSUM = 16


META_DTYPE: np.dtype[np.void] = _core.META_DTYPE
"""Structured dtype of a parsed-header record (64 bytes, integers only, host byte order;
``src_ip6``/``dst_ip6`` are raw network-order bytes, ``src_ip4``/``dst_ip4`` host-order ints).
Built once by the extension from the Rust parser's field table; the same object types
``Batch.headers`` and ``RxBatch.headers()``."""


def _rows(
    frames: npt.NDArray[np.uint8], lengths: npt.ArrayLike | None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint32]]:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 2:
        raise TypeError("frames must be a 2-D numpy uint8 array (one frame per row)")
    if lengths is None:
        lens = np.full(frames.shape[0], frames.shape[1], dtype=np.uint32)
    else:
        lens = np.ascontiguousarray(lengths, dtype=np.uint32)
        if lens.ndim != 1:
            raise ValueError("lengths must be a 1-D array with one length per frame")
    return frames, lens


def parse(
    frames: npt.NDArray[np.uint8], lengths: npt.ArrayLike | None = None
) -> npt.NDArray[np.void]:
    """Parse each frame's headers into a record of :data:`META_DTYPE`.

    Args:
        frames: 2-D ``uint8`` array, one frame per row (C-contiguous).
        lengths: bytes used in each row (default: the full row).

    Returns:
        A structured array with one record per frame.
    """
    frames, lens = _rows(frames, lengths)
    out = np.zeros(frames.shape[0], dtype=META_DTYPE)
    _core.parse_into(np.ascontiguousarray(frames), lens, out.view(np.uint8).reshape(len(out), -1))
    return out


def edit(
    frames: npt.NDArray[np.uint8],
    lengths: npt.ArrayLike | None = None,
    *,
    swap_macs: bool = False,
    swap_ips: bool = False,
    swap_ports: bool = False,
    fix_checksums: bool = False,
    mask: npt.NDArray[np.bool_] | None = None,
) -> int:
    """Edit frames in place (the rows where ``mask`` is true, or all rows).

    Swapping source and destination keeps valid checksums valid; ``fix_checksums`` recomputes
    the IPv4 header and UDP/TCP checksums after you changed other fields.

    Returns:
        How many frames every requested edit applied to (frames lacking the headers are left as
        they were and not counted).
    """
    frames, lens = _rows(frames, lengths)
    if not frames.flags.c_contiguous or not frames.flags.writeable:
        raise ValueError("frames must be a writable, C-contiguous array to edit in place")
    ops = (
        (EDIT_SWAP_MACS if swap_macs else 0)
        | (EDIT_SWAP_IPS if swap_ips else 0)
        | (EDIT_SWAP_PORTS if swap_ports else 0)
        | ((EDIT_FIX_IPV4_CHECKSUM | EDIT_FIX_L4_CHECKSUM) if fix_checksums else 0)
    )
    if ops == 0:
        raise ValueError("nothing to do: set swap_macs, swap_ips, swap_ports or fix_checksums")
    m = None if mask is None else np.ascontiguousarray(mask, dtype=np.bool_)
    return int(_core.edit_frames(frames, lens, ops, m))


def checksums_ok(
    frames: npt.NDArray[np.uint8], lengths: npt.ArrayLike | None = None
) -> npt.NDArray[np.bool_]:
    """Whether each frame's IPv4 header and UDP/TCP checksums verify."""
    frames, lens = _rows(frames, lengths)
    out = np.zeros(frames.shape[0], dtype=np.bool_)
    _core.checksums_ok(np.ascontiguousarray(frames), lens, out)
    return out


def frames_from_bytes(
    packets: Sequence[bytes | bytearray | memoryview], width: int | None = None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint32]]:
    """Pack byte strings into the (frames, lengths) layout, rows ``width`` bytes wide."""
    lens = np.array([len(p) for p in packets], dtype=np.uint32)
    w = int(lens.max(initial=0)) if width is None else width
    if len(lens) and int(lens.max()) > w:
        raise ValueError(f"a packet of {int(lens.max())} bytes does not fit rows of {w} bytes")
    frames = np.zeros((len(packets), max(w, 1)), dtype=np.uint8)
    for i, p in enumerate(packets):
        frames[i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    return frames, lens
