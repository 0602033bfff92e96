"""Attached sessions: a client's RPC streams joined to a container's stdio or an exec's.

Output goes to the client as stream items ``{"stream": "stdout"|"stderr", "data": bytes}``
under its credit. What the client sends (``$stream.in`` items, see engine.rpc.protocol) is
one of::

    {"stdin": bytes}          data for the process's stdin (at most 64 KiB an item)
    {"eof": true}             the client's stdin ended
    {"resize": [rows, cols]}  the client's terminal changed size
    {"signal": N}             a signal the client received, for the process (sig-proxy)

With a terminal, the client's stdin is scanned for the detach keys (docker's default
ctrl-p ctrl-q): when they come, the session ends and the container runs on. Without one
the stdin is passed on as it is (binary data may hold any bytes), as docker does.
"""

from __future__ import annotations

import logging
import signal as signals
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from engine.errors import Conflict, EngineError, InvalidArgument, NotFound

log = logging.getLogger("engine.attach")

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
Send = Callable[[dict[str, Any]], Awaitable[None]]

_CTRL_SPECIAL = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(text: str) -> bytes:
    """docker's ``--detach-keys``: comma-separated keys, each a single character or
    ``ctrl-<a-z, @, [, \\, ], ^, _>``. An empty string is the default."""
    text = text or DEFAULT_DETACH_KEYS
    keys = bytearray()
    for part in text.split(","):
        key = part.strip()
        low = key.lower()
        if low.startswith("ctrl-") and len(key) == 6:
            ch = low[5]
            if "a" <= ch <= "z":
                keys.append(ord(ch) - ord("a") + 1)
                continue
            if ch in _CTRL_SPECIAL:
                keys.append(_CTRL_SPECIAL[ch])
                continue
        elif len(key) == 1 and ord(key) < 128:
            keys.append(ord(key))
            continue
        raise InvalidArgument(
            f"invalid detach keys {text!r}: use comma-separated keys, each a character or "
            "ctrl-<value> with <value> one of a-z, @, [, \\, ], ^, _ (e.g. ctrl-p,ctrl-q)"
        )
    return bytes(keys)


class DetachMatcher:
    """Finds the detach sequence in a stream of input chunks. Bytes that might start it are
    held back until the next byte tells (then passed on, or the session ends)."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self._held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to pass on, and whether the sequence is complete (what followed it in
        this chunk is dropped, as docker does)."""
        out = bytearray()
        for value in data:
            byte = bytes((value,))
            candidate = self._held + byte
            if not self.keys.startswith(candidate):
                out += self._held  # not the sequence after all
                candidate = byte
            if self.keys.startswith(candidate):
                if candidate == self.keys:
                    self._held = b""
                    return bytes(out), True
                self._held = candidate
            else:
                self._held = b""
                out += byte
        return bytes(out), False


def _stdin_data(item: dict[str, Any]) -> bytes:
    data = item["stdin"]
    if isinstance(data, str):
        return data.encode()
    if not isinstance(data, bytes):
        raise InvalidArgument("stdin items carry bytes: {\"stdin\": <bin>}")
    return data


def _window(item: dict[str, Any]) -> tuple[int, int]:
    value = item["resize"]
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise InvalidArgument("resize items are {\"resize\": [rows, cols]}")
    return value[0], value[1]


def _signal(item: dict[str, Any]) -> int:
    value = item["signal"]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < signals.NSIG:
        raise InvalidArgument(f"invalid signal {value!r} in a stream input item")
    return value


class InputHandlers:
    """What an attached session does with the client's input."""

    def __init__(self, *, write: Callable[[bytes], Awaitable[None]] | None,
                 close_stdin: Callable[[], Awaitable[None]] | None,
                 resize: Callable[[int, int], Awaitable[None]] | None,
                 signal: Callable[[int], Awaitable[None]] | None) -> None:
        self.write = write
        self.close_stdin = close_stdin
        self.resize = resize
        self.signal = signal


async def feed_input(input: Any, handlers: InputHandlers, matcher: DetachMatcher | None) -> bool:
    """Apply the client's items until its input ends or the detach keys come (True).
    A resize or signal that cannot be delivered (the process is ending) is logged only."""
    stdin_open = handlers.write is not None
    async for item in input:
        if not isinstance(item, dict):
            raise InvalidArgument("stream input items are maps: stdin, eof, resize or signal")
        if "stdin" in item:
            data = _stdin_data(item)
            detached = False
            if matcher is not None:
                data, detached = matcher.feed(data)
            if data and stdin_open and handlers.write is not None:
                try:
                    await handlers.write(data)
                except (Conflict, trio.BrokenResourceError, trio.ClosedResourceError):
                    stdin_open = False  # the process's stdin is gone; output may still come
            if detached:
                return True
        elif item.get("eof"):
            if stdin_open and handlers.close_stdin is not None:
                await handlers.close_stdin()
            stdin_open = False
        elif "resize" in item:
            rows, cols = _window(item)
            if handlers.resize is not None:
                try:
                    await handlers.resize(rows, cols)
                except (Conflict, NotFound) as e:
                    log.debug("resize not delivered: %s", e)
        elif "signal" in item:
            sig = _signal(item)
            if handlers.signal is not None:
                try:
                    await handlers.signal(sig)
                except EngineError as e:
                    log.debug("signal %d not delivered: %s", sig, e)
        else:
            raise InvalidArgument(f"unknown stream input item {sorted(item)}: use stdin, eof, "
                                  "resize or signal")
    return False


async def pump_attach(connection: Any, send: Send, input: Any | None, handlers: InputHandlers,
                      matcher: DetachMatcher | None) -> bool:
    """Forward the container's output until its monitor ends it, and the client's input
    meanwhile. True when the client detached (the container runs on)."""
    detached = False
    async with trio.open_nursery() as nursery:

        async def output() -> None:
            while (chunk := await connection.receive()) is not None:
                stream, data = chunk
                await send({"stream": stream, "data": data})
            nursery.cancel_scope.cancel()

        async def feed() -> None:
            nonlocal detached
            if await feed_input(input, handlers, matcher):
                detached = True
                nursery.cancel_scope.cancel()

        nursery.start_soon(output)
        if input is not None:
            nursery.start_soon(feed)
    return detached


def exec_handlers(handle: Any, *, stdin: bool, tty: bool) -> InputHandlers:
    """Input of an exec: its stdin pipe (or terminal), its terminal's size, its signals."""

    async def write(data: bytes) -> None:
        await handle.stdin.send_all(data)

    async def close_stdin() -> None:
        if not tty:
            await handle.stdin.aclose()

    async def resize(rows: int, cols: int) -> None:
        if tty:
            handle.resize(rows, cols)
        await trio.lowlevel.checkpoint()

    return InputHandlers(
        write=write if stdin and handle.stdin is not None else None,
        close_stdin=close_stdin,
        resize=resize,
        signal=handle.kill,
    )
