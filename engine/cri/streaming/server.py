"""The CRI's streaming server: where the URLs of Exec, Attach and PortForward lead.

kubelet's design (pkg/kubelet/cri/streaming/server.go): the gRPC call stores the request
under a single-use, unguessable token and answers ``http://HOST:PORT/<kind>/<token>``; the
client then upgrades an HTTP request on that URL to SPDY/3.1 (crictl, critest, client-go) or
to a WebSocket (the channel protocols). A token is consumed by its first request, and
expires after ``TOKEN_TTL`` unused. HTTP/1.1 is engine.httpserver's h11 server.

Answers: an unknown, used or expired token is 404; a request that is neither SPDY nor
WebSocket, or that offers no protocol we speak, is 400 naming the ones we do.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import time
from typing import Any

import attrs
import trio

from engine.cri.streaming import spdysessions, websocket
from engine.cri.streaming.commands import run_attach, run_exec
from engine.cri.streaming.targets import (
    KIND_OF,
    AttachTarget,
    ExecTarget,
    PortForwardTarget,
    Target,
)
from engine.errors import ConfigError, ResourceExhausted
from engine.httpserver import HijackResponse, Request, Response, serve_connection

log = logging.getLogger("engine.cri.streaming")

# seconds an unused URL stays valid (kubelet's cacheTTL); tests shorten it through the
# environment, as the Docker API's request timeout is
TOKEN_TTL = float(os.environ.get("ENGINE_CRI_STREAMING_TOKEN_TTL") or 60.0)
MAX_TOKENS = 1000  # requests waiting for their client (kubelet's maxInFlight)
MAX_CONNECTIONS = 512  # open streaming connections; more are closed at once
PATH = re.compile(r"/(exec|attach|portforward)/([A-Za-z0-9_-]{1,128})")
PROTOCOL_HEADER = "x-stream-protocol-version"


@attrs.define
class _Entry:
    target: Target
    expires: float


class TokenCache:
    """Single-use tokens for pending requests, each valid for ``ttl`` seconds."""

    def __init__(self, ttl: float = TOKEN_TTL, limit: int = MAX_TOKENS) -> None:
        self.ttl = ttl
        self.limit = limit
        self._entries: dict[str, _Entry] = {}

    def _purge(self, now: float) -> None:
        for token in [t for t, e in self._entries.items() if e.expires <= now]:
            del self._entries[token]

    def insert(self, target: Target) -> str:
        now = time.monotonic()
        self._purge(now)
        if len(self._entries) >= self.limit:
            raise ResourceExhausted(f"{self.limit} streaming requests are waiting for their "
                                    "clients already: try again later")
        token = secrets.token_urlsafe(24)
        self._entries[token] = _Entry(target, now + self.ttl)
        return token

    def consume(self, token: str) -> Target | None:
        entry = self._entries.pop(token, None)
        if entry is None or entry.expires <= time.monotonic():
            return None
        return entry.target


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"invalid cri-streaming-address {address!r}: use HOST:PORT "
                          "(e.g. 127.0.0.1:0 for an ephemeral loopback port)")
    if not _loopback(host):
        # plain HTTP whose only guard is the URLs' tokens, which a network can see: as the
        # RPC's and the Docker API's plain listeners, loopback only
        raise ConfigError(f"cri-streaming-address {address!r} is not a loopback address: the streaming "
                          "server speaks plain HTTP, so it listens on loopback only (e.g. 127.0.0.1:0)")
    return host, int(port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _text(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status=status, body=(message + "\n").encode(), content_type="text/plain; charset=utf-8",
                    headers=headers or [])


class StreamingServer:
    def __init__(self, app: Any, allowed_origins: Any = None) -> None:
        self.app = app
        self.tokens = TokenCache()
        self.base_url = ""
        self._allowed_origins = allowed_origins or (lambda: list(getattr(app.config, "ws_allowed_origins", [])))
        self._connections = 0

    def url_for(self, target: Target) -> str:
        if not self.base_url:
            raise ResourceExhausted("the CRI streaming server is not listening")
        return f"{self.base_url}/{KIND_OF[type(target)]}/{self.tokens.insert(target)}"

    # --- HTTP --------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Any:
        match = PATH.fullmatch(request.path)
        if match is None or request.method not in ("GET", "POST"):
            return _text(404, "404 page not found")
        kind, token = match.groups()
        target = self.tokens.consume(token)
        if target is None or KIND_OF[type(target)] != kind:
            return _text(404, "404 page not found")
        if websocket.is_websocket(request.headers):
            return websocket.upgrade(request, target, self.app, self._allowed_origins())
        return self._spdy(request, target)

    def _spdy(self, request: Request, target: Target) -> Any:
        supported = (spdysessions.PORTFORWARD_PROTOCOLS if isinstance(target, PortForwardTarget)
                     else spdysessions.COMMAND_PROTOCOLS)
        offered = [p.strip() for p in request.headers.get(PROTOCOL_HEADER, "").split(",") if p.strip()]
        upgrade = request.headers.get("upgrade", "").lower()
        connection = request.headers.get("connection", "").lower()
        if "upgrade" not in connection or "spdy/3.1" not in upgrade:
            return _text(400, "unable to upgrade: this URL takes an upgrade to SPDY/3.1 or websocket "
                              f"(Connection: Upgrade, Upgrade: SPDY/3.1, X-Stream-Protocol-Version: "
                              f"one of {', '.join(supported)})")
        protocol = spdysessions.negotiate(offered, supported)
        if not protocol:
            return _text(400, f"unable to upgrade: unable to negotiate protocol: client supports "
                              f"{offered or 'none'}, server accepts {supported}",
                         [("X-Accepted-Stream-Protocol-Versions", p) for p in supported])
        run = self._spdy_session(target, protocol)
        return HijackResponse(run=run, content_type="", upgrade="SPDY/3.1",
                              headers=[("X-Stream-Protocol-Version", protocol)])

    def _spdy_session(self, target: Target, protocol: str) -> Any:
        app = self.app
        if isinstance(target, PortForwardTarget):
            return lambda hijacked: spdysessions.serve_portforward(hijacked, target)
        if isinstance(target, ExecTarget):
            wanted = spdysessions.expected_streams(protocol, target.stdin, target.stdout, target.stderr, target.tty)
            return lambda hijacked: spdysessions.serve_command(
                hijacked, protocol, wanted, lambda io: run_exec(app, target, io))
        assert isinstance(target, AttachTarget)
        wanted = spdysessions.expected_streams(protocol, target.stdin, target.stdout, target.stderr, target.tty)
        return lambda hijacked: spdysessions.serve_command(
            hijacked, protocol, wanted, lambda io: run_attach(app, target, io))

    def _error_reply(self, error: BaseException, request: Request | None) -> Response:
        if isinstance(error, ResourceExhausted):
            return _text(429, str(error))
        if request is None or type(error).__module__.startswith("h11"):
            return _text(400, f"bad request: {error}")
        log.error("CRI streaming request %s failed", request.path, exc_info=error)
        return _text(500, "internal error")

    async def _handle_safely(self, request: Request) -> Any:
        try:
            return await self.handle(request)
        except Exception as e:  # noqa: BLE001 - one request's failure is its own 500
            return self._error_reply(e, request)

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self._connections >= MAX_CONNECTIONS:
            await stream.aclose()
            return
        self._connections += 1
        try:
            await serve_connection(stream, self._handle_safely, self._error_reply)
        finally:
            self._connections -= 1

    async def serve(self, address: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        host, port = parse_address(address)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as e:
            raise ConfigError(f"cannot listen on {address} for the CRI's streaming server: "
                              f"{e.strerror or e}") from None
        sockname = listeners[0].socket.getsockname()
        shown = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        self.base_url = f"http://{shown}:{sockname[1]}"
        log.info("CRI streaming server listening", extra={"url": self.base_url})
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._connection, listeners)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self.base_url = ""
