"""PROXY protocol headers (HAProxy's spec, versions 1 and 2): what a target learns of the client it serves.

Pure: the client's address and the address it connected to in, the header bytes out. Sent first on every
upstream connection of an app with `"ProxyProtocol"`, a replayed one included (workers/relay.py).
"""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PROXY = 0x21  # version 2, command PROXY
V2_LOCAL = 0x20  # version 2, command LOCAL: no addresses (the receiver uses the connection's own)
V2_TCP4 = 0x11
V2_TCP6 = 0x21
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"


def _ip(address: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack listener's IPv4 client is an IPv4 client
    return ip


def encode_v1(source: object, destination: object) -> bytes:
    """`PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n`, or `PROXY UNKNOWN\\r\\n` when the addresses are not IP."""
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None or src.version != dst.version:
        return V1_UNKNOWN
    assert isinstance(source, tuple) and isinstance(destination, tuple)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {int(source[1])} {int(destination[1])}\r\n".encode("ascii")


def encode_v2(source: object, destination: object) -> bytes:
    """The binary header: signature, version/command, family/protocol, length, then the addresses."""
    src, dst = _ip(source), _ip(destination)
    if src is None or dst is None or src.version != dst.version:
        return V2_SIGNATURE + struct.pack("!BBH", V2_LOCAL, 0, 0)
    assert isinstance(source, tuple) and isinstance(destination, tuple)
    family = V2_TCP4 if src.version == 4 else V2_TCP6
    body = src.packed + dst.packed + struct.pack("!HH", int(source[1]), int(destination[1]))
    return V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, family, len(body)) + body


def encode(version: str, source: object, destination: object) -> bytes:
    return encode_v1(source, destination) if version == "v1" else encode_v2(source, destination)
