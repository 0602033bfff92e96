"""The transport's fast path for h11 body reads behaves exactly as h11's own method."""

from __future__ import annotations

import random

import h11
import h11._receivebuffer as rb

from engine.plugins.registry import transport

transport.import_httpx()  # the tuning is applied when httpx is first used


def test_fast_path_is_applied_to_this_h11() -> None:
    assert transport.H11_FAST_BODY, f"h11 {h11.__version__}: the body fast path is not applied"
    assert getattr(rb.ReceiveBuffer.maybe_extract_at_most, "_engine_fast_path", False)


def test_fast_path_matches_h11_on_random_operations() -> None:
    fast = rb.ReceiveBuffer.maybe_extract_at_most
    original = fast._engine_original  # type: ignore[attr-defined]
    rng = random.Random(7)
    for _ in range(200):
        a, b = rb.ReceiveBuffer(), rb.ReceiveBuffer()
        for _ in range(30):
            op = rng.choice(["add", "add", "take", "line", "lines"])
            if op == "add":
                data = rng.choice([b"", b"abc", b"\r\n", b"x\r\n\r\nyy", bytes(rng.randbytes(50))])
                a += data
                b += data
            elif op == "take":
                count = rng.choice([0, 1, 3, 10, 1000])
                assert fast(a, count) == original(b, count)
            elif op == "line":
                assert a.maybe_extract_next_line() == b.maybe_extract_next_line()
            else:
                assert a.maybe_extract_lines() == b.maybe_extract_lines()
            assert bytes(a) == bytes(b) and len(a) == len(b)


def test_whole_buffer_is_handed_over_without_copies() -> None:
    buffer = rb.ReceiveBuffer()
    buffer += b"x" * 1000
    inner = buffer._data
    out = buffer.maybe_extract_at_most(4096)
    assert out is inner and len(buffer) == 0
    assert buffer.maybe_extract_at_most(10) is None
