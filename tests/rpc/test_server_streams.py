"""The server's streaming convention, in process: credit-based backpressure, cancellation
when the client goes away, concurrent calls on one connection."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.client.aio import connect
from engine.rpc import protocol
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext, RPCServer, StreamSender
from engine.rpc.transports import serve_stream_listeners, unix_listener


class Probe:
    def __init__(self) -> None:
        self.sent = 0
        self.cancelled = trio.Event()
        self.finished = False


def make_table(probe: Probe) -> MethodTable:
    table = MethodTable()

    @table.method("test.count", stream=True)
    async def count(ctx: CallContext, params: dict[str, Any], stream: StreamSender) -> int:
        try:
            for i in range(params.get("n", 1000)):
                await stream.send(i)
                probe.sent = stream.sent
        except trio.Cancelled:
            probe.cancelled.set()
            raise
        probe.finished = True
        return stream.sent

    @table.method("test.sleep")
    async def sleep(ctx: CallContext, params: dict[str, Any]) -> str:
        await trio.sleep(params["seconds"])
        return "slept"

    return table


_socket_dir: Path | None = None


@pytest.fixture(autouse=True)
def socket_dir() -> Iterator[None]:
    """A short directory for the socket (sun_path holds 108 bytes), removed afterwards."""
    global _socket_dir
    with tempfile.TemporaryDirectory(prefix="rpc-") as name:
        _socket_dir = Path(name)
        yield
    _socket_dir = None


async def start_server(nursery: trio.Nursery, probe: Probe) -> str:
    assert _socket_dir is not None
    path = _socket_dir / "s.sock"
    server = RPCServer(make_table(probe), app=None)
    listener = await unix_listener(path)
    await nursery.start(serve_stream_listeners, server, [listener])
    assert path.stat().st_mode & 0o777 == 0o660
    return f"unix://{path}"


async def test_server_stops_at_the_window_until_the_client_acks() -> None:
    probe = Probe()
    async with trio.open_nursery() as nursery:
        host = await start_server(nursery, probe)
        stream = await trio.open_unix_socket(host.removeprefix("unix://"))
        await stream.send_all(protocol.encode_request(1, "test.count", {"n": 1000}))
        # bounded waits for the counts, then a pause in which an unenforced window would overrun
        with trio.fail_after(10):
            while probe.sent < protocol.STREAM_WINDOW:  # noqa: ASYNC110 - polls the server's counter
                await trio.sleep(0.01)
        await trio.sleep(0.5)
        assert probe.sent == protocol.STREAM_WINDOW
        await stream.send_all(protocol.encode_notification(protocol.STREAM_ACK, [1, 10]))
        with trio.fail_after(10):
            while probe.sent < protocol.STREAM_WINDOW + 10:  # noqa: ASYNC110 - polls the server's counter
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert probe.sent == protocol.STREAM_WINDOW + 10
        await stream.aclose()
        with trio.fail_after(5):
            await probe.cancelled.wait()
        assert not probe.finished
        nursery.cancel_scope.cancel()


async def test_a_client_that_consumes_gets_every_item_and_the_result() -> None:
    probe = Probe()
    async with trio.open_nursery() as nursery:
        host = await start_server(nursery, probe)
        async with connect(host) as client:
            async with client.stream("test.count", n=500) as items:
                got = [i async for i in items]
            assert got == list(range(500))
            assert items.result == 500
        nursery.cancel_scope.cancel()


async def test_cancel_notification_stops_a_call_and_others_go_on() -> None:
    probe = Probe()
    async with trio.open_nursery() as nursery:
        host = await start_server(nursery, probe)
        async with connect(host) as client:
            async with client.stream("test.count", n=10**6) as items:
                async for i in items:
                    if i == 5:
                        break
            with trio.fail_after(5):
                await probe.cancelled.wait()
            # Calls run concurrently on one connection: a slow one does not block a fast one.
            results: list[str] = []
            async with trio.open_nursery() as calls:
                calls.start_soon(lambda: _append(results, client.call("test.sleep", seconds=0.3)))
                calls.start_soon(lambda: _append(results, client.call("test.sleep", seconds=0.01)))
            assert results == ["slept", "slept"]
        nursery.cancel_scope.cancel()


async def _append(results: list[str], aw: Any) -> None:
    results.append(await aw)
