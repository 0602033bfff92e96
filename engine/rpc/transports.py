"""Listeners the RPC is served on.

    unix:///run/engine/engine.sock   a unix socket, mode 0660 (group may be set by config)
    tcp://127.0.0.1:2376             the same RPC over WebSocket (binary frames, one msgpack
                                     message per frame); TLS with client certificates when
                                     tls-cert/tls-key (and tls-ca for client verification) are set
    fd://                            sockets inherited via systemd socket activation
                                     (LISTEN_FDS / LISTEN_PID, first fd 3)
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import socket as stdsocket
import ssl
import stat
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
import trio

from engine.errors import ConfigError, ResourceExhausted, Unavailable
from engine.lazy import LazyModule
from engine.rpc import protocol
from engine.rpc.server import RPCServer

# imported when a WebSocket listener is served (most daemons have none)
if TYPE_CHECKING:
    import trio_websocket
else:
    trio_websocket = LazyModule("trio_websocket")

log = logging.getLogger("engine.rpc")

SD_LISTEN_FDS_START = 3


@attrs.frozen
class TLSConfig:
    cert: Path
    key: Path
    ca: Path | None = None  # when set, clients must present a certificate signed by it

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        if self.ca is not None:
            ctx.load_verify_locations(str(self.ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def parse_host(host: str) -> tuple[str, str]:
    """``unix:///p`` → ("unix", "/p"); ``tcp://h:p`` → ("tcp", "h:p"); ``fd://`` → ("fd", "")."""
    if host.startswith("/"):
        return "unix", host
    parsed = urlsplit(host)
    if parsed.scheme == "unix" and (parsed.path or parsed.netloc):
        return "unix", parsed.netloc + parsed.path
    if parsed.scheme == "tcp" and parsed.hostname and parsed.port:
        return "tcp", f"{parsed.hostname}:{parsed.port}"
    if parsed.scheme == "fd":
        return "fd", parsed.netloc
    raise ConfigError(
        f"invalid host {host!r}: use unix:///path/to.sock, tcp://HOST:PORT or fd://"
    )


async def unix_listener(path: Path, *, mode: int = 0o660, gid: int | None = None) -> trio.SocketListener:
    await trio.to_thread.run_sync(lambda: _prepare_socket_path(path))
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, -1, gid)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise Unavailable(f"cannot listen on {path}: {e.strerror}") from None
    return trio.SocketListener(sock)


def _prepare_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; remove it or choose another --host")
    # A socket file left by a daemon that died: nobody answers on it, so it can go.
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)
            return
        raise
    else:
        raise Unavailable(f"another daemon is listening on {path}")
    finally:
        probe.close()


def inherited_listeners() -> list[trio.SocketListener]:
    """Sockets passed by systemd socket activation (sd_listen_fds semantics)."""
    if os.environ.get("LISTEN_PID") not in (None, str(os.getpid())):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    listeners = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = trio.socket.fromfd(fd, stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        os.close(fd)  # fromfd dup'ed it
        listeners.append(trio.SocketListener(sock))
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    return listeners


# File descriptors kept for the daemon's own work (runtimes, monitors, logs, layers) when
# capping connections: a quarter of the limit, at least this many.
FD_RESERVE = 256
# errnos of an accept that failed for want of descriptors or memory: wait, then accept again
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY = 0.1  # seconds
REFUSAL_LOG_INTERVAL = 60.0  # seconds between log lines about refused connections


def max_connections() -> int:
    """Connections the daemon takes at once: below its descriptor limit (read each time,
    so a raised limit applies at once), leaving room for the work the calls start."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - max(FD_RESERVE, soft // 4))


class RefusalLog:
    """Says once (then at most every REFUSAL_LOG_INTERVAL, with a count) why connections
    are refused: a flood must not turn into a flood of log lines."""

    def __init__(self) -> None:
        self._next = -math.inf
        self._since = 0

    def refused(self, why: str) -> None:
        self._since += 1
        now = trio.current_time()
        if now >= self._next:
            log.warning("refusing RPC connections: %s (%d since the last report)", why, self._since)
            self._next = now + REFUSAL_LOG_INTERVAL
            self._since = 0


async def serve_stream_listeners(
    server: RPCServer, listeners: list[trio.SocketListener], *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Accept loops (trio.serve_listeners logs a traceback per failed accept, ten a second
    when out of descriptors): a connection beyond ``max_connections()`` is told why and
    closed; an accept that fails for want of descriptors is retried after a pause."""
    refusals = RefusalLog()

    async def refuse(stream: trio.SocketStream, limit: int) -> None:
        error = ResourceExhausted(f"too many connections to the daemon ({limit}, the limit); "
                                  "close idle ones and retry")
        with trio.move_on_after(1):
            try:
                await stream.send_all(protocol.encode_notification(protocol.ERROR_EVENT, [error.to_wire()]))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(stream)

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                refusals.refused(f"accept failed: {os.strerror(e.errno)}")
                await trio.sleep(_ACCEPT_RETRY)
                continue
            limit = max_connections()
            if server.connections >= limit:
                refusals.refused(f"{server.connections} connections open, the limit is {limit}")
                nursery.start_soon(refuse, stream, limit)
                continue
            nursery.start_soon(server.handle_stream, stream, "unix")

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery)
        task_status.started(listeners)


class WebSocketTransport:
    def __init__(self, ws: Any, max_frame: int) -> None:
        self.ws = ws
        self.max_frame = max_frame
        self.last_frame_size = 0

    async def messages(self) -> AsyncIterator[Any]:
        while True:
            try:
                data = await self.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            if isinstance(data, str):
                data = data.encode()
            decoder = protocol.Decoder(self.max_frame, max_entries=protocol.MAX_REQUEST_ENTRIES)
            self.last_frame_size = len(data)
            for obj in decoder.feed(data):
                yield obj
                del obj

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send_message(data)
        except trio_websocket.ConnectionClosed:
            raise trio.BrokenResourceError("websocket closed") from None

    async def aclose(self) -> None:
        await self.ws.aclose()


async def open_tcp_listeners(address: str, *, loopback_only: bool) -> list[trio.SocketListener]:
    """Bind ``host:port`` (a name is resolved; every address it has is bound).

    With ``loopback_only`` (a listener without TLS), each bound socket's own address must be
    a loopback one: what the name resolves to decides, not how it is spelled.
    Errors: ConfigError for a name that does not resolve, an address that cannot be bound,
    or a non-loopback address when ``loopback_only``."""
    host, _, port_text = address.rpartition(":")
    try:
        listeners = await trio.open_tcp_listeners(int(port_text), host=host)
    except OSError as e:  # socket.gaierror included
        raise ConfigError(
            f"cannot listen on tcp://{_bracketed(host)}:{port_text}: "
            f"{e.strerror or e}; check the address in --host"
        ) from None
    if loopback_only:
        exposed = [
            name for name in (_bound_address(listener) for listener in listeners)
            if not _is_loopback(name)
        ]
        if exposed:
            for listener in listeners:
                await listener.aclose()
            raise ConfigError(
                f"refusing to serve tcp://{_bracketed(host)}:{port_text} without TLS: it binds "
                f"{', '.join(exposed)}, which is not a loopback address. Set tlscert/tlskey (and "
                "tlscacert to require client certificates), or listen on 127.0.0.1 or [::1]"
            )
    return listeners


def _bound_address(listener: trio.SocketListener) -> str:
    return str(listener.socket.getsockname()[0])


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- WebSocket origins -------------------------------------------------------------------------
#
# A browser lets any web page open a WebSocket to 127.0.0.1; the handshake then carries the
# page's Origin. Only non-browser clients (no Origin) and origins the daemon's config names
# explicitly may pass.

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalise_origin(text: str) -> str:
    """An origin as browsers serialise it: ``scheme://host[:port]``, lower case, the
    default port left out; ``null`` stays ``null``. ValueError for anything else."""
    text = text.strip()
    if text.lower() == "null":
        return "null"
    parts = urlsplit(text)
    if not parts.scheme or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r} is not an origin: use scheme://host[:port]")
    scheme = parts.scheme.lower()
    port = parts.port  # ValueError for a bad one
    host = _bracketed(parts.hostname.lower())
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_refusal(headers: list[tuple[bytes, bytes]], allowed: Collection[str]) -> str | None:
    """Why a handshake with these headers must be refused, or None to accept it."""
    origins = [value for name, value in headers if name.lower() == b"origin"]
    if not origins:
        return None  # not a browser: our SDK, engctl, scripts
    if len(origins) > 1:
        return "more than one Origin header"
    raw = origins[0].decode("latin-1")
    try:
        origin = normalise_origin(raw)
    except ValueError:
        return f"malformed Origin {raw!r}"
    if origin in allowed:
        return None
    return (
        f"Origin {raw!r} is not allowed; the daemon's owner can allow it with "
        "--ws-allowed-origin (ws-allowed-origins in daemon.json)"
    )


async def serve_websocket_rpc(
    server: RPCServer,
    listeners: list[trio.SocketListener],
    tls: TLSConfig | None,
    allowed_origins: Callable[[], Collection[str]] = frozenset,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the RPC over WebSocket on ``listeners`` (TLS when ``tls``). A handshake with
    an ``Origin`` header that ``allowed_origins()`` (read at each handshake, so a config
    reload applies) does not list is refused with 403."""
    ws_listeners: list[Any] = list(listeners)
    if tls is not None:
        ctx = tls.server_context()
        ws_listeners = [trio.SSLListener(lst, ctx, https_compatible=True) for lst in listeners]

    refusals = RefusalLog()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        limit = max_connections()
        if server.connections >= limit:
            refusals.refused(f"{server.connections} connections open, the limit is {limit}")
            await request.reject(503, body=b"too many connections to the daemon")
            return
        refusal = origin_refusal(request.headers, allowed_origins())
        if refusal is not None:
            log.warning("refused a WebSocket handshake: %s", refusal)
            await request.reject(403, body=refusal.encode())
            return
        ws = await request.accept()
        await server.handle_transport(WebSocketTransport(ws, server.max_frame), peer="websocket")

    ws_server = trio_websocket.WebSocketServer(handler, ws_listeners, max_message_size=server.max_frame)
    await ws_server.run(task_status=task_status)
