"""A blocking client for the engine's RPC. It must not import trio: engctl uses it.

    from engine.client.sync import Client
    with Client() as c:                      # ENGINE_HOST or unix:///run/engine/engine.sock
        print(c.call("system.version"))
        for event in c.stream("system.events"):
            ...
"""

from __future__ import annotations

# _socket is socket.py's C core: socket.py itself (enum-wrapped constants, selectors) costs
# engctl ~5 ms of start-up, and a blocking unix-socket client needs nothing from it.
import _socket
import os

from engine.errors import DaemonNotRunning, EngineError, ProtocolError, from_wire
from engine.rpc import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

DEFAULT_HOST = "unix:///run/engine/engine.sock"


def default_host() -> str:
    return os.environ.get("ENGINE_HOST") or DEFAULT_HOST


def _unix_path(host: str) -> str:
    if host.startswith("unix://"):
        return host[len("unix://") :]
    if host.startswith("/"):
        return host
    raise EngineError(
        f"the synchronous client speaks only unix sockets, not {host!r}; "
        "use engine.client.aio for tcp:// (WebSocket) hosts"
    )


class Stream:
    """Items of a streaming call; ``result`` holds the final response once iteration ends."""

    def __init__(self, client: Client, msgid: int) -> None:
        self._client = client
        self._msgid = msgid
        self.result: Any = None
        self.done = False
        self._unacked = 0

    def __iter__(self) -> Iterator[Any]:
        while not self.done:
            message = self._client._next_message()
            if isinstance(message, protocol.Notification):
                if message.method == protocol.STREAM_ITEM and message.params[0] == self._msgid:
                    yield message.params[1]
                    self._ack_one()
                elif message.method == protocol.ERROR_EVENT:
                    raise from_wire(message.params[0] if message.params else None)
            elif isinstance(message, protocol.Response) and message.msgid == self._msgid:
                self.done = True
                if message.error is not None:
                    raise from_wire(message.error)
                self.result = message.result

    def _ack_one(self) -> None:
        self._unacked += 1
        if self._unacked >= protocol.STREAM_WINDOW // 2:
            self._client._send(
                protocol.encode_notification(
                    protocol.STREAM_ACK, [self._msgid, self._unacked], small=True
                )
            )
            self._unacked = 0

    def cancel(self) -> None:
        if not self.done:
            self._client._send(
                protocol.encode_notification(protocol.CANCEL, [self._msgid], small=True)
            )


class Client:
    def __init__(self, host: str | None = None, *, timeout: float | None = None) -> None:
        self.host = host or default_host()
        self.timeout = timeout
        self._sock: _socket.socket | None = None
        # small frames are read without importing msgpack (engctl's start-up budget)
        self._decoder = protocol.SmallDecoder()
        self._pending: list[Any] = []
        self._next_id = 0

    def connect(self) -> Client:
        path = _unix_path(self.host)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise DaemonNotRunning(
                f"cannot connect to the engine daemon at {self.host}: is engined running? "
                "(start it with `engined`, or point -H/ENGINE_HOST at its socket)"
            ) from None
        except PermissionError:
            sock.close()
            raise DaemonNotRunning(
                f"permission denied connecting to {self.host}: run as root or as a member "
                "of the socket's group"
            ) from None
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        self._sock.sendall(data)

    def _next_message(self) -> protocol.Message:
        assert self._sock is not None
        while not self._pending:
            try:
                data = self._sock.recv(262144)
            except TimeoutError:
                raise EngineError("timed out waiting for the daemon's answer") from None
            if not data:
                raise DaemonNotRunning("the daemon closed the connection")
            self._pending.extend(self._decoder.feed(data))
        obj = self._pending.pop(0)
        try:
            return protocol.parse_message(obj)
        except ProtocolError as e:
            raise EngineError(f"malformed message from the daemon: {e}") from None

    def _request(self, method: str, params: dict[str, Any]) -> int:
        self._next_id = (self._next_id + 1) % protocol.MAX_MSGID
        self._send(protocol.encode_request(self._next_id, method, params, small=True))
        return self._next_id

    def call(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        msgid = self._request(method, {**(params or {}), **kw})
        while True:
            message = self._next_message()
            if isinstance(message, protocol.Response) and message.msgid == msgid:
                if message.error is not None:
                    raise from_wire(message.error)
                return message.result
            if isinstance(message, protocol.Notification) and message.method == protocol.ERROR_EVENT:
                raise from_wire(message.params[0] if message.params else None)

    def stream(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Stream:
        msgid = self._request(method, {**(params or {}), **kw})
        return Stream(self, msgid)
