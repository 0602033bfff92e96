"""The DNS wire codec of the embedded resolver: hand-built packets, byte by byte."""

from __future__ import annotations

import struct

import pytest

from engine.network import dns_wire as w

# id 0x1234, RD, 1 question: web.  A  IN
HAND_QUERY = (
    b"\x12\x34"  # id
    b"\x01\x00"  # flags: RD
    b"\x00\x01\x00\x00\x00\x00\x00\x00"  # qd=1 an=0 ns=0 ar=0
    b"\x03WeB\x00"  # the name, mixed case
    b"\x00\x01\x00\x01"  # A, IN
)


def test_a_hand_built_query_parses() -> None:
    q = w.parse_query(HAND_QUERY)
    assert q.id == 0x1234
    assert q.question.name == "web"
    assert q.question.labels == (b"WeB",)
    assert (q.question.qtype, q.question.qclass) == (w.A, w.IN)
    assert q.edns_size is None and q.udp_limit() == 512


def test_the_answer_echoes_the_question_and_points_at_it() -> None:
    q = w.parse_query(HAND_QUERY)
    reply = w.build_response(q, w.NOERROR, [w.a_record("10.89.1.5", 600)])
    assert reply[:2] == b"\x12\x34"
    flags = struct.unpack("!H", reply[2:4])[0]
    assert flags & w.QR and flags & w.RD and flags & w.RA and flags & w.AA
    assert flags & w.RCODE_MASK == w.NOERROR
    assert struct.unpack("!4H", reply[4:12]) == (1, 1, 0, 0)
    assert reply[12:21] == b"\x03WeB\x00\x00\x01\x00\x01"  # the question as asked, case kept
    assert reply[21:] == b"\xc0\x0c" + b"\x00\x01\x00\x01" + struct.pack("!I", 600) + b"\x00\x04" + bytes([10, 89, 1, 5])


def test_edns_is_read_and_answered_with_an_opt_record() -> None:
    data = w.build_query("web.example", w.AAAA, id=7, edns_size=4096)
    q = w.parse_query(data)
    assert q.edns_size == 4096 and q.udp_limit() == w.EDNS_SIZE and q.edns_ok
    reply = w.build_response(q, w.NOERROR, [])
    header = w.parse_header(reply)
    assert (header.qdcount, header.ancount, header.arcount) == (1, 0, 1)
    assert reply.endswith(b"\x00" + struct.pack("!HHIH", w.OPT, w.EDNS_SIZE, 0, 0))


def test_answers_that_do_not_fit_set_tc() -> None:
    q = w.parse_query(HAND_QUERY)
    reply = w.build_response(q, w.NOERROR, [w.a_record(f"10.0.0.{i}", 600) for i in range(40)], limit=512)
    header = w.parse_header(reply)
    assert header.flags & w.TC and len(reply) <= 512 and header.ancount < 40


def test_compression_pointers_are_followed_backwards() -> None:
    # A response whose answer owner points at the question, and a name that is a label
    # followed by a pointer into the middle of the question's name.
    msg = (struct.pack("!6H", 1, w.QR, 1, 2, 0, 0)
           + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
           + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"
           + b"\x03ftp\xc0\x10\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x05")
    labels, end = w.read_name(msg, 33)
    assert labels == (b"www", b"example", b"com") and end == 35
    labels, end = w.read_name(msg, 49)
    assert labels == (b"ftp", b"example", b"com") and end == 55


@pytest.mark.parametrize("name_bytes", [
    b"\xc0\x0c",  # a pointer to itself
    b"\x01a\xc0\x0c",  # a label, then a pointer back to that label: a loop
    b"\xc0\x20",  # a pointer forwards
])
def test_pointer_loops_and_forward_pointers_are_refused(name_bytes: bytes) -> None:
    msg = struct.pack("!6H", 1, 0, 1, 0, 0, 0) + name_bytes + b"\x00\x01\x00\x01" + b"\x00" * 32
    with pytest.raises(w.MalformedMessage):
        w.parse_query(msg)


def test_a_two_pointer_loop_is_refused() -> None:
    # name 1 at 12 points to 14, name at 14 points back to 12: each pointer goes below the
    # previous target only once
    msg = struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\xc0\x0e\xc0\x0c" + b"\x00\x01\x00\x01"
    with pytest.raises(w.MalformedMessage):
        w.read_name(msg, 14)
    with pytest.raises(w.MalformedMessage):
        w.read_name(msg, 12)


@pytest.mark.parametrize("data", [
    b"",
    b"\x12\x34\x01",  # truncated header
    HAND_QUERY[:-1],  # truncated question
    HAND_QUERY[:12] + b"\x03ab",  # label past the end
    struct.pack("!6H", 1, 0, 0, 0, 0, 0),  # zero questions
    struct.pack("!6H", 1, 0, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2,  # two questions
    HAND_QUERY + b"\x00",  # trailing garbage
    struct.pack("!6H", 1, w.QR, 1, 0, 0, 0) + HAND_QUERY[12:],  # a response
    struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\x40a\x00\x00\x01\x00\x01",  # label type 01
    struct.pack("!6H", 1, 0, 1, 0, 0, 0) + b"\x3fa" * 2,  # 63-byte label cut short
    struct.pack("!6H", 1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",  # 257 bytes
])
def test_malformed_queries_raise_malformed_message(data: bytes) -> None:
    with pytest.raises(w.MalformedMessage):
        w.parse_query(data)


def test_names_and_reverse_names() -> None:
    assert w.encode_name("web.") == w.encode_name("web") == b"\x03web\x00"
    assert w.encode_name("") == b"\x00"
    assert w.reverse_ipv4("5.1.89.10.in-addr.arpa") == "10.89.1.5"
    assert w.reverse_ipv4("web.in-addr.arpa") is None
    assert w.reverse_ipv4("1.2.3.400.in-addr.arpa") is None
    with pytest.raises(ValueError):
        w.encode_name("a" * 64)
