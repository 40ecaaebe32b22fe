"""Frames as data: parsed header columns, in-place edits, replies, checksums and pcap files.

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

Replies are built in place by Rust helpers (:func:`udp_reply`, :func:`icmp_echo_reply`,
:func:`tcp_rst`, :func:`arp_reply`, :func:`neighbor_advert`; :func:`reply` for rows), so a
processor can answer what it receives::

    n = packet.icmp_echo_reply(frame)  # frame: batch.frame(i), a bytearray, a uint8 array

New frames are made from a :class:`Template` (UDP or TCP over IPv4 or IPv6, optionally VLAN
tagged) whose named fields are filled per packet in Rust, lengths and checksums included;
a handler emits them in one call::

    tpl = packet.Template(dst_ip="198.18.0.1", proto="tcp", tcp_flags="SA")
    batch.emit_template(tpl, 32, fields={"src_port": np.arange(32) + 1024, "payload": b"x"})
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Literal, Union

import numpy as np
import numpy.typing as npt

from kbypass import _core
from kbypass._core import PcapWriter, ReplyError, Template

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
    "REPLY_KINDS",
    "ReplyError",
    "Template",
    "arp_reply",
    "checksums_ok",
    "edit",
    "frames_from_bytes",
    "icmp_echo_reply",
    "neighbor_advert",
    "parse",
    "reply",
    "tcp_rst",
    "udp_reply",
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


# --- replies -----------------------------------------------------------------------------------

Frame = Union[npt.NDArray[np.uint8], bytearray, memoryview]
"""A frame to answer in place: a 1-D writable ``uint8`` array (``batch.frame(i)``, a row of a
2-D array), a ``bytearray`` or a writable ``memoryview``."""
Mac = Union[str, bytes]
"""A MAC address: ``"02:00:00:00:00:01"`` or 6 bytes."""
IPv4 = Union[str, bytes, int, ipaddress.IPv4Address]
"""An IPv4 address: ``"198.18.0.2"``, 4 bytes, an int or an :class:`ipaddress.IPv4Address`."""
IPv6 = Union[str, bytes, int, ipaddress.IPv6Address]
"""An IPv6 address: ``"fd00::2"``, 16 bytes, an int or an :class:`ipaddress.IPv6Address`."""
ReplyKind = Literal["udp", "icmp_echo", "tcp_rst", "arp", "neighbor_advert"]
"""The replies :func:`reply` makes."""

REPLY_KINDS: tuple[ReplyKind, ...] = ("udp", "icmp_echo", "tcp_rst", "arp", "neighbor_advert")
"""The ``kind`` values of :func:`reply`."""


def _frame(frame: Frame) -> npt.NDArray[np.uint8]:
    """Return the frame as a 1-D writable uint8 array over the same memory."""
    if isinstance(frame, np.ndarray):
        arr = frame
    else:
        try:
            arr = np.frombuffer(frame, dtype=np.uint8)
        except (TypeError, ValueError) as e:
            raise TypeError(
                "frame must be a writable 1-D uint8 numpy array, a bytearray or a memoryview, "
                f"not {type(frame).__name__}"
            ) from e
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise TypeError(f"frame must be a 1-D uint8 array, not {arr.ndim}-D {arr.dtype}")
    if not arr.flags.writeable:
        raise TypeError("frame is read-only: answer in a writable buffer (a bytearray, not bytes)")
    if not arr.flags.c_contiguous:
        raise ValueError("frame must be contiguous (a row or a slice with step 1)")
    return arr


def _length(arr: npt.NDArray[np.uint8], length: int | None) -> int:
    if length is None:
        return len(arr)
    if length < 0:
        raise ValueError(f"length {length} is negative")
    return length


def _mac(mac: Mac) -> bytes:
    if isinstance(mac, str):
        parts = mac.replace("-", ":").split(":")
        try:
            if len(parts) != 6 or any(not 1 <= len(p) <= 2 for p in parts):
                raise ValueError
            return bytes(int(p, 16) for p in parts)
        except ValueError:
            raise ValueError(f"mac {mac!r} is not a MAC address like '02:00:00:00:00:01'") from None
    b = bytes(mac)
    if len(b) != 6:
        raise ValueError(f"mac must be 6 bytes, not {len(b)}")
    return b


def _ip(ip: IPv4 | IPv6, version: int, what: str) -> bytes:
    """Return the packed address of IP ``version``; ``what`` names the argument in errors."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    if isinstance(ip, int):
        addr = ipaddress.IPv4Address(ip) if version == 4 else ipaddress.IPv6Address(ip)
    else:
        addr = ipaddress.ip_address(ip)
    if addr.version != version:
        raise ValueError(f"{what} must be an IPv{version} address, not {ip!r}")
    return addr.packed


def udp_reply(
    frame: Frame, payload: bytes | bytearray | memoryview, length: int | None = None
) -> int:
    """Turn the UDP datagram in ``frame`` into its reply carrying ``payload``, in place.

    MACs, IP addresses and ports are swapped, the payload replaced, and the IPv4 total length,
    UDP length, IPv4 header checksum and UDP checksum (IPv4 and IPv6) computed; VLAN tags are
    kept, IPv4 options and IPv6 extension headers dropped, TTL/hop limit set to 64. A reply
    shorter than 60 bytes is zero-padded to 60 when the buffer has room. The request's UDP
    checksum is not checked (offloads leave it partial on veth and many NICs).

    Args:
        frame: the buffer holding the request (see :data:`Frame`); its size is the room the
            reply has, so a longer payload needs a buffer larger than the request.
        payload: the reply's payload.
        length: the request's length in ``frame`` (default: all of it).

    Returns:
        The reply's length (``frame[:n]`` is the reply).

    Raises:
        ReplyError: the frame is not a whole, unfragmented unicast UDP datagram (cut short,
            lengths that disagree, a bad IPv4 header checksum, another protocol, a multicast or
            broadcast destination), or the reply does not fit the buffer. The frame is then
            unchanged.
    """
    arr = _frame(frame)
    return _core.udp_reply(arr, _length(arr, length), bytes(payload))


def icmp_echo_reply(frame: Frame, length: int | None = None) -> int:
    """Turn the ICMP echo request (IPv4 type 8, ICMPv6 type 128) in ``frame`` into its reply.

    The reply (type 0 / 129) keeps the identifier, sequence number and data; MACs and IP
    addresses are swapped, TTL/hop limit set to 64, the checksums computed (ICMPv6's with its
    pseudo-header). VLAN tags are kept, IPv4 options and IPv6 extension headers dropped.

    Returns:
        The reply's length.

    Raises:
        ReplyError: not an echo request, its ICMP checksum fails, it is cut short, a fragment,
            or sent to a multicast or broadcast address. The frame is then unchanged.
    """
    arr = _frame(frame)
    return _core.icmp_echo_reply(arr, _length(arr, length))


def tcp_rst(frame: Frame, length: int | None = None) -> int:
    """Turn the TCP segment in ``frame`` into the reset that answers it (RFC 9293).

    If the segment has ACK set, the RST's sequence number is its acknowledgment number;
    otherwise the RST has sequence number 0 and ACK set, acknowledging the segment's sequence
    number plus its length (SYN and FIN count one each). Ports, addresses and MACs are swapped,
    the header has no options and window 0, checksums are computed (IPv4 and IPv6).

    Returns:
        The reply's length.

    Raises:
        ReplyError: not a TCP segment, a RST (never answered), a bad data offset, cut short, a
            fragment, or sent to a multicast or broadcast address. The frame is then unchanged.
    """
    arr = _frame(frame)
    return _core.tcp_rst(arr, _length(arr, length))


def arp_reply(frame: Frame, mac: Mac, ipv4: IPv4, length: int | None = None) -> int:
    """Answer the ARP request in ``frame`` that asks for ``ipv4``: "ipv4 is at mac".

    This lets a processor own an address on an interface whose kernel does not have it. The
    reply goes from ``mac`` to the asker's hardware address, VLAN tags kept. A probe (sender
    0.0.0.0) is answered, which defends the address; a gratuitous ARP is not.

    Args:
        frame: the buffer holding the request.
        mac: the MAC address to give (the interface's).
        ipv4: the address answered for.
        length: the request's length in ``frame`` (default: all of it).

    Returns:
        The reply's length (60 when the buffer has room for the padding, else 42 untagged).

    Raises:
        ReplyError: not an Ethernet/IPv4 ARP request, a request for another address, a
            gratuitous ARP, or cut short. The frame is then unchanged.
        ValueError: ``mac`` or ``ipv4`` is not a unicast address.
    """
    arr = _frame(frame)
    return _core.arp_reply(arr, _length(arr, length), _mac(mac), _ip(ipv4, 4, "ipv4"))


def neighbor_advert(frame: Frame, mac: Mac, ipv6: IPv6, length: int | None = None) -> int:
    """Answer the IPv6 Neighbor Solicitation in ``frame`` for ``ipv6`` (the IPv6 ARP reply).

    The Neighbor Advertisement (RFC 4861) comes from ``mac`` and ``ipv6`` with hop limit 255,
    the override flag and a target link-layer address option giving ``mac``. A solicitation
    from an address is answered to it (solicited flag set; to its source link-layer address
    option's MAC, else the frame's source); one from ``::`` (duplicate address detection) to
    all nodes, ``ff02::1``. The solicitation is validated as RFC 4861 says (hop limit 255,
    ICMPv6 checksum, options). The advertisement is 32 bytes after the IPv6 header, 8 more than
    a solicitation without options: such a request needs a buffer with room.

    Returns:
        The reply's length.

    Raises:
        ReplyError: not a valid Neighbor Solicitation, one for another address, or no room.
            The frame is then unchanged.
        ValueError: ``mac`` or ``ipv6`` is not a unicast address.
    """
    arr = _frame(frame)
    return _core.neighbor_advert(arr, _length(arr, length), _mac(mac), _ip(ipv6, 6, "ipv6"))


def reply(
    frames: npt.NDArray[np.uint8],
    lengths: npt.NDArray[np.uint32],
    kind: ReplyKind,
    *,
    payload: bytes | bytearray | memoryview | None = None,
    mac: Mac | None = None,
    ip: IPv4 | IPv6 | None = None,
    mask: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.bool_]:
    """Answer many frames (rows ``frames[i, :lengths[i]]``) in place with one kind of reply.

    Each row is answered as the single-frame helper of ``kind`` would (``"udp"``:
    :func:`udp_reply` with ``payload``; ``"icmp_echo"``; ``"tcp_rst"``; ``"arp"`` and
    ``"neighbor_advert"`` with ``mac`` and ``ip``), the row's width being the room its reply
    has. Rows it does not answer, and rows where ``mask`` is false, are left as they were.

    Args:
        frames: 2-D writable, C-contiguous ``uint8`` array, one frame per row.
        lengths: ``uint32`` array with each row's length; updated in place with the replies'.
        kind: which reply (one of :data:`REPLY_KINDS`).
        payload: the UDP reply's payload (``kind="udp"`` only).
        mac: the MAC address to give (``"arp"``, ``"neighbor_advert"``).
        ip: the address answered for (IPv4 for ``"arp"``, IPv6 for ``"neighbor_advert"``).
        mask: rows to answer (default: all).

    Returns:
        Which rows were answered (a boolean array): e.g. their TX verdicts.
    """
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 2:
        raise TypeError("frames must be a 2-D numpy uint8 array (one frame per row)")
    if not frames.flags.c_contiguous or not frames.flags.writeable:
        raise ValueError("frames must be a writable, C-contiguous array to answer in place")
    if (
        not isinstance(lengths, np.ndarray)
        or lengths.dtype != np.uint32
        or lengths.ndim != 1
        or not lengths.flags.writeable
        or not lengths.flags.c_contiguous
    ):
        raise TypeError(
            "lengths must be a writable 1-D numpy uint32 array: it is updated in place with the "
            "replies' lengths"
        )
    ip_bytes = None if ip is None else _ip(ip, 6 if kind == "neighbor_advert" else 4, "ip")
    answered = np.zeros(frames.shape[0], dtype=np.bool_)
    m = None if mask is None else np.ascontiguousarray(mask, dtype=np.bool_)
    _core.reply_rows(
        frames,
        lengths,
        kind,
        answered,
        payload=None if payload is None else bytes(payload),
        mac=None if mac is None else _mac(mac),
        ip=ip_bytes,
        mask=m,
    )
    return answered
