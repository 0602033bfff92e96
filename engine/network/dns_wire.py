"""A small, strict DNS wire-format codec (RFC 1035, with RFC 6891's OPT record tolerated).

Just what the embedded resolver (engine.network.dns) needs: read a query's header and its
one question, and build an answer to it. Answers relayed from an upstream server are never
rebuilt: the resolver checks their header and question (``parse_header`` /
``read_question``) and passes the bytes on untouched, compression pointers and all.

Every reader raises ``MalformedMessage`` (never IndexError or struct.error) on a packet that
does not follow the format: a name longer than 255 bytes, a label longer than 63, a
compression pointer that does not point strictly backwards (the only way a loop can be
refused without counting), or a message shorter than its counts say.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

import attrs

HEADER_LEN = 12
MAX_NAME = 255
MAX_LABEL = 63
UDP_PLAIN_SIZE = 512  # without EDNS a UDP answer must fit in this (RFC 1035 4.2.1)
EDNS_SIZE = 1232  # what we advertise and honour at most (the DNS flag day 2020 value)

# types and classes
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 255
IN = 1

# response codes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

# header flag bits
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
OPCODE_MASK = 0x7800
RCODE_MASK = 0x000F


class MalformedMessage(ValueError):
    """The bytes are not a DNS message we can read."""


@attrs.frozen
class Header:
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & QR)

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11

    @property
    def rcode(self) -> int:
        return self.flags & RCODE_MASK


@attrs.frozen
class Question:
    labels: tuple[bytes, ...]  # as sent (case kept); ``name`` is the lowered text form
    qtype: int
    qclass: int

    @property
    def name(self) -> str:
        """Lowercase, dots between labels, no trailing dot ("" for the root)."""
        return ".".join(label.decode("ascii", "replace").lower() for label in self.labels)


@attrs.frozen
class Query:
    header: Header
    question: Question
    edns_size: int | None  # the OPT record's UDP payload size, None without EDNS
    edns_ok: bool = True  # False when the OPT record's version is not 0 (answer BADVERS... as FORMERR)

    @property
    def id(self) -> int:
        return self.header.id

    def udp_limit(self) -> int:
        """The largest UDP answer the asker accepts."""
        if self.edns_size is None:
            return UDP_PLAIN_SIZE
        return max(UDP_PLAIN_SIZE, min(self.edns_size, EDNS_SIZE))


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_LEN:
        raise MalformedMessage(f"{len(data)} bytes is shorter than a DNS header")
    return Header(*struct.unpack_from("!6H", data, 0))


def read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """The name at ``offset``: its labels and the offset just after it in the message.

    A compression pointer must point strictly before the start of the labels it follows
    (the name's own start, or the previous pointer's target), so following pointers always
    moves backwards and ends: a loop, or a pointer to itself, is refused."""
    labels: list[bytes] = []
    length = 1  # the root's terminating zero byte
    end: int | None = None  # where the name ends in the stream (after the first pointer)
    limit = offset  # the next pointer must go below this
    pos = offset
    while True:
        if pos >= len(data):
            raise MalformedMessage("name runs past the end of the message")
        size = data[pos]
        kind = size & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise MalformedMessage("compression pointer cut short")
            target = ((size & 0x3F) << 8) | data[pos + 1]
            if end is None:
                end = pos + 2
            if target >= limit:
                raise MalformedMessage(f"compression pointer at {pos} to {target} does not point backwards")
            limit = target
            pos = target
            continue
        if kind != 0:
            raise MalformedMessage(f"label type {kind:#x} is not supported")
        pos += 1
        if size == 0:
            break
        if pos + size > len(data):
            raise MalformedMessage("label runs past the end of the message")
        length += size + 1
        if length > MAX_NAME:
            raise MalformedMessage("name longer than 255 bytes")
        labels.append(bytes(data[pos:pos + size]))
        pos += size
    return tuple(labels), (end if end is not None else pos)


def read_question(data: bytes, offset: int = HEADER_LEN) -> tuple[Question, int]:
    labels, pos = read_name(data, offset)
    if pos + 4 > len(data):
        raise MalformedMessage("question cut short")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    return Question(labels, qtype, qclass), pos + 4


def _skip_record(data: bytes, offset: int) -> tuple[int, int, int, int]:
    """(type, class, ttl, offset after the record) of the resource record at ``offset``."""
    _, pos = read_name(data, offset)
    if pos + 10 > len(data):
        raise MalformedMessage("resource record cut short")
    rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
    pos += 10 + rdlen
    if pos > len(data):
        raise MalformedMessage("resource record data runs past the end of the message")
    return rtype, rclass, ttl, pos


def parse_query(data: bytes) -> Query:
    """A standard query with exactly one question; an OPT record in the additional section
    is read for its UDP size. Anything else (a response, other sections, trailing bytes)
    is MalformedMessage."""
    header = parse_header(data)
    if header.is_response:
        raise MalformedMessage("a response, not a query")
    if header.qdcount != 1:
        raise MalformedMessage(f"{header.qdcount} questions; a query has exactly one")
    if header.ancount or header.nscount:
        raise MalformedMessage("a query with answer or authority records")
    question, pos = read_question(data)
    edns_size: int | None = None
    edns_ok = True
    for _ in range(header.arcount):
        start = pos
        rtype, rclass, ttl, pos = _skip_record(data, pos)
        if rtype == OPT:
            if edns_size is not None or data[start] != 0:
                raise MalformedMessage("more than one OPT record, or one not owned by the root")
            edns_size = rclass
            edns_ok = (ttl >> 16) & 0xFF == 0
    if pos != len(data):
        raise MalformedMessage(f"{len(data) - pos} bytes after the last record")
    return Query(header, question, edns_size, edns_ok)


def encode_name(name: str) -> bytes:
    """A dotted name (a trailing dot or none) in wire form, uncompressed."""
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) <= MAX_LABEL:
            raise ValueError(f"bad label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > MAX_NAME:
        raise ValueError(f"name {name!r} is longer than 255 bytes")
    return bytes(out)


def encode_labels(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def build_query(name: str, qtype: int = A, *, id: int = 0, rd: bool = True,
                edns_size: int | None = None) -> bytes:
    """A query (for tests and tools): one question, RD set by default, OPT if asked."""
    flags = RD if rd else 0
    out = struct.pack("!6H", id, flags, 1, 0, 0, 1 if edns_size is not None else 0)
    out += encode_name(name) + struct.pack("!HH", qtype, IN)
    if edns_size is not None:
        out += _opt_record(edns_size)
    return out


def _opt_record(size: int) -> bytes:
    return b"\0" + struct.pack("!HHIH", OPT, size, 0, 0)


@attrs.frozen
class Record:
    """An answer to the question: owner is the question's name (a pointer to it)."""

    rtype: int
    ttl: int
    rdata: bytes


def a_record(ip: str, ttl: int) -> Record:
    return Record(A, ttl, ipaddress.IPv4Address(ip).packed)


def aaaa_record(ip: str, ttl: int) -> Record:
    return Record(AAAA, ttl, ipaddress.IPv6Address(ip).packed)


def ptr_record(target: str, ttl: int) -> Record:
    return Record(PTR, ttl, encode_name(target))


_QUESTION_POINTER = b"\xc0\x0c"  # the question's name always starts right after the header


def build_response(query: Query, rcode: int, answers: Sequence[Record] = (), *,
                   authoritative: bool = True, limit: int | None = None) -> bytes:
    """The answer to ``query``: its id, RD copied, RA set, the question echoed. Answers that
    do not fit in ``limit`` bytes are left out and TC is set (the asker retries over TCP)."""
    flags = QR | (query.header.flags & (OPCODE_MASK | RD)) | RA | (rcode & RCODE_MASK)
    if authoritative:
        flags |= AA
    question = encode_labels(query.question.labels) + struct.pack(
        "!HH", query.question.qtype, query.question.qclass)
    opt = _opt_record(EDNS_SIZE) if query.edns_size is not None else b""
    body = b""
    count = 0
    for record in answers:
        rr = _QUESTION_POINTER + struct.pack("!HHIH", record.rtype, IN, record.ttl, len(record.rdata)) + record.rdata
        if limit is not None and HEADER_LEN + len(question) + len(body) + len(rr) + len(opt) > limit:
            flags |= TC
            break
        body += rr
        count += 1
    header = struct.pack("!6H", query.id, flags, 1, count, 0, 1 if opt else 0)
    return header + question + body + opt


def reverse_ipv4(name: str) -> str | None:
    """The address a ``d.c.b.a.in-addr.arpa`` name asks about, None for any other name."""
    parts = name.split(".")
    if len(parts) != 6 or parts[4:] != ["in-addr", "arpa"]:
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(parts[:4]))))
    except ValueError:
        return None
