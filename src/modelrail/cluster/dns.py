"""One DNS question (type A, over UDP) in the standard library: how `up` proves that the
cluster's DNS answers through the kube-dns Service, with no DNS package installed."""

from __future__ import annotations

import secrets
import socket
import struct


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def _skip_name(msg: bytes, pos: int) -> int:
    while True:
        length = msg[pos]
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length


def query_a(name: str, server: str, *, port: int = 53, timeout: float = 2.0) -> list[str]:
    """The IPv4 addresses `server` gives for `name` ([] if none); OSError if it does not
    answer."""
    qid = secrets.randbits(16)
    question = _encode_name(name) + struct.pack("!HH", 1, 1)  # type A, class IN
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question  # recursion desired
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, port))
        msg, _ = sock.recvfrom(4096)
    rid, _flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    if rid != qid:
        return []
    pos = 12
    for _ in range(qd):
        pos = _skip_name(msg, pos) + 4
    found = []
    for _ in range(an):
        pos = _skip_name(msg, pos)
        rtype, _rclass, _ttl, length = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntoa(msg[pos:pos + 4]))
        pos += length
    return found
