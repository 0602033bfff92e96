"""Client-to-server streams in process: the server's credit ($stream.in_ack) bounds what a
client may have in flight, a client that ignores it or sends oversized items fails its call
(and only its call), and the async SDK's duplex stream waits for credit instead."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.client.aio import connect
from engine.errors import ResourceExhausted
from engine.rpc import protocol
from engine.rpc.methods import MethodTable
from engine.rpc.server import CallContext, RPCServer, StreamInput, StreamSender
from engine.rpc.transports import serve_stream_listeners, unix_listener


class Gate:
    """Holds the handler back until opened: the client's items pile up meanwhile."""

    def __init__(self) -> None:
        self.open = trio.Event()
        self.received: list[Any] = []


def make_table(gate: Gate) -> MethodTable:
    table = MethodTable()

    @table.method("test.sum", stream=True, input=True)
    async def sum_(ctx: CallContext, params: dict[str, Any], stream: StreamSender,
                   input: StreamInput) -> int:
        await gate.open.wait()
        total = 0
        async for item in input:
            gate.received.append(item)
            if item == "end":
                return total
            total += item["n"]
            await stream.send(total)
        return total

    return table


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rpc-in-") as name:
        yield Path(name) / "s.sock"


async def start_server(nursery: trio.Nursery, path: Path, gate: Gate) -> str:
    listener = await unix_listener(path)
    await nursery.start(serve_stream_listeners, RPCServer(make_table(gate), app=None), [listener])
    return f"unix://{path}"


class RawClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = protocol.Decoder()
        self.pending: list[Any] = []

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next(self) -> protocol.Message:
        while not self.pending:
            self.pending.extend(self.decoder.feed(await self.stream.receive_some(65536)))
        return protocol.parse_message(self.pending.pop(0))


async def test_the_server_grants_credit_as_it_consumes(socket_path: Path) -> None:
    gate = Gate()
    gate.open.set()
    async with trio.open_nursery() as nursery:
        host = await start_server(nursery, socket_path, gate)
        raw = RawClient(await trio.open_unix_socket(host.removeprefix("unix://")))
        await raw.send(protocol.encode_request(1, "test.sum"))
        for _ in range(protocol.STREAM_WINDOW):
            await raw.send(protocol.encode_notification(protocol.STREAM_IN, [1, {"n": 1}]))
        acks = 0
        with trio.fail_after(10):
            while acks < protocol.STREAM_WINDOW:
                message = await raw.next()
                if isinstance(message, protocol.Notification) and message.method == protocol.STREAM_IN_ACK:
                    assert message.params[0] == 1
                    acks += message.params[1]
                elif isinstance(message, protocol.Notification) and message.method == protocol.STREAM_ITEM:
                    await raw.send(protocol.encode_notification(protocol.STREAM_ACK, [1, 1]))
        assert acks == protocol.STREAM_WINDOW
        nursery.cancel_scope.cancel()


async def test_input_beyond_the_credit_fails_the_call(socket_path: Path) -> None:
    gate = Gate()  # closed: the handler reads nothing, so no credit comes back
    async with trio.open_nursery() as nursery:
        host = await start_server(nursery, socket_path, gate)
        raw = RawClient(await trio.open_unix_socket(host.removeprefix("unix://")))
        await raw.send(protocol.encode_request(1, "test.sum"))
        for _ in range(protocol.STREAM_WINDOW + 1):
            await raw.send(protocol.encode_notification(protocol.STREAM_IN, [1, {"n": 1}]))
        with trio.fail_after(10):
            message = await raw.next()
        assert isinstance(message, protocol.Response) and message.msgid == 1
        assert message.error is not None and message.error["code"] == ResourceExhausted.code
        assert "credit" in message.error["message"]
        assert gate.received == []
        # the connection still serves other calls
        gate.open.set()
        await raw.send(protocol.encode_request(2, "test.sum"))
        await raw.send(protocol.encode_notification(protocol.STREAM_IN, [2, "end"]))
        with trio.fail_after(10):
            message = await raw.next()
        assert isinstance(message, protocol.Response) and (message.msgid, message.error, message.result) == (2, None, 0)
        nursery.cancel_scope.cancel()


async def test_an_oversized_input_item_fails_the_call(socket_path: Path) -> None:
    gate = Gate()
    gate.open.set()
    async with trio.open_nursery() as nursery:
        host = await start_server(nursery, socket_path, gate)
        raw = RawClient(await trio.open_unix_socket(host.removeprefix("unix://")))
        await raw.send(protocol.encode_request(1, "test.sum"))
        big = {"stdin": b"x" * (protocol.MAX_INPUT_ITEM + 1)}
        await raw.send(protocol.encode_notification(protocol.STREAM_IN, [1, big]))
        with trio.fail_after(10):
            message = await raw.next()
        assert isinstance(message, protocol.Response)
        assert message.error is not None and message.error["code"] == ResourceExhausted.code
        nursery.cancel_scope.cancel()


async def test_async_duplex_waits_for_credit_and_delivers_everything(socket_path: Path) -> None:
    gate = Gate()
    async with trio.open_nursery() as nursery:
        host = await start_server(nursery, socket_path, gate)
        async with connect(host) as client, client.duplex("test.sum") as duplex:
            sent = 0

            async def sender() -> None:
                nonlocal sent
                for _ in range(1000):
                    assert await duplex.send({"n": 1})
                    sent += 1
                assert await duplex.send("end")

            async with trio.open_nursery() as inner:
                inner.start_soon(sender)
                with trio.fail_after(10):  # a bounded wait for the window, then a pause to overrun it
                    while sent < protocol.STREAM_WINDOW:  # noqa: ASYNC110 - polls the sender's count
                        await trio.sleep(0.01)
                await trio.sleep(0.3)
                assert sent == protocol.STREAM_WINDOW  # out of credit: waiting, not failing
                gate.open.set()
                totals = [t async for t in duplex]
            assert totals == list(range(1, 1001))
            assert duplex.result == 1000
        nursery.cancel_scope.cancel()


def test_input_methods_must_stream() -> None:
    with pytest.raises(ValueError, match="must stream"):
        MethodTable().method("x.y", input=True)
