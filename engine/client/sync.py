"""A blocking client for the engine's RPC. It must not import trio: engctl uses it.

    from engine.client.sync import Client
    with Client() as c:                      # ENGINE_HOST or unix:///run/engine/engine.sock
        print(c.call("system.version"))
        for event in c.stream("system.events"):
            ...
        with c.attach("web") as session:     # a duplex stream: output in, stdin out
            session.write(b"echo hi\n")
            for item in session:             # {"stream": "stdout", "data": b"..."}
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


class DuplexStream(Stream):
    """A streaming call that also takes input (``$stream.in``): ``send(item)`` under the
    server's credit, and the helpers ``write(bytes)``, ``close_stdin()``, ``resize(rows,
    cols)`` and ``signal(n)`` for attached sessions. Iterate for the output.

    For event loops (engctl's terminal): ``fileno()`` is the connection's socket,
    ``credit`` how many items may be sent without waiting, ``pump()`` reads what the
    daemon sent (one ``recv`` when nothing is buffered) and returns the output items that
    arrived; ``done`` and ``result`` are set once the call has ended.

    ``send`` waits when the credit is spent; output that arrives meanwhile is kept (and
    acknowledged, so the daemon never waits on a client that waits on it) for the next
    iteration or ``pump``."""

    def __init__(self, client: Client, msgid: int) -> None:
        super().__init__(client, msgid)
        self.credit = protocol.STREAM_WINDOW
        self._ready: list[Any] = []
        self._error: EngineError | None = None

    def __enter__(self) -> DuplexStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def fileno(self) -> int:
        assert self._client._sock is not None
        return self._client._sock.fileno()

    def _route(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.Notification):
            params = message.params
            if message.method == protocol.STREAM_ITEM and params and params[0] == self._msgid:
                self._ready.append(params[1])
                self._ack_one()
            elif message.method == protocol.STREAM_IN_ACK and params and params[0] == self._msgid:
                self.credit += int(params[1]) if len(params) > 1 else 1
            elif message.method == protocol.ERROR_EVENT:
                self.done = True
                self._error = from_wire(params[0] if params else None)
        elif isinstance(message, protocol.Response) and message.msgid == self._msgid:
            self.done = True
            if message.error is not None:
                self._error = from_wire(message.error)
            else:
                self.result = message.result

    def buffered(self) -> bool:
        """Whether messages already read wait to be handled (``pump`` would not block)."""
        return bool(self._client._pending)

    def pump(self) -> list[Any]:
        """Handle what the daemon sent: one ``recv`` unless messages are buffered already.
        The output items that arrived (and those kept while ``send`` waited). Raises the
        call's error once it has ended with one."""
        if not self.done:
            self._route(self._client._next_message())
            while self._client._pending and not self.done:
                self._route(self._client._next_message())
        items, self._ready = self._ready, []
        if self.done and self._error is not None and not items:
            error, self._error = self._error, None
            raise error
        return items

    def __iter__(self) -> Iterator[Any]:
        while True:
            if self._ready:
                items, self._ready = self._ready, []
                yield from items
                continue
            if self.done:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                return
            self._route(self._client._next_message())

    def send(self, item: Any) -> bool:
        """Send one input item, waiting for credit; False when the call has ended (the item
        is dropped)."""
        while self.credit <= 0 and not self.done:
            self._route(self._client._next_message())
        if self.done:
            return False
        self.credit -= 1
        self._client._send(protocol.encode_notification(protocol.STREAM_IN, [self._msgid, item]))
        return True

    def write(self, data: bytes) -> bool:
        """Data for the process's stdin, in items of at most ``MAX_INPUT_ITEM`` bytes."""
        step = protocol.MAX_INPUT_ITEM
        for start in range(0, len(data), step):
            if not self.send({"stdin": bytes(data[start:start + step])}):
                return False
        return True

    def close_stdin(self) -> bool:
        return self.send({"eof": True})

    def resize(self, rows: int, cols: int) -> bool:
        return self.send({"resize": [int(rows), int(cols)]})

    def signal(self, signum: int) -> bool:
        return self.send({"signal": int(signum)})


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

    def duplex(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> DuplexStream:
        """A streaming call of a method that takes input (``rpc.describe``: input)."""
        msgid = self._request(method, {**(params or {}), **kw})
        return DuplexStream(self, msgid)

    def attach(self, container: str, *, stdin: bool = True, detach_keys: str = "") -> DuplexStream:
        """Join a running container's stdio (``container.attach``): iterate for its output,
        ``write``/``close_stdin``/``resize``/``signal`` for input; ``result`` at the end holds
        ``ExitCode``, or ``Detached``."""
        return self.duplex("container.attach", id=container, stdin=stdin, detach_keys=detach_keys)
