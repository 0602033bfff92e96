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
import logging
import os
import socket as stdsocket
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from engine.errors import ConfigError, Unavailable
from engine.rpc import protocol
from engine.rpc.server import RPCServer

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
    parsed = urlparse(host)
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


async def serve_stream_listeners(
    server: RPCServer, listeners: list[trio.SocketListener], *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await server.handle_stream(stream, peer="unix")

    await trio.serve_listeners(handler, listeners, task_status=task_status)  # type: ignore[arg-type]


class WebSocketTransport:
    def __init__(self, ws: Any, max_frame: int) -> None:
        self.ws = ws
        self.max_frame = max_frame

    async def messages(self) -> AsyncIterator[Any]:
        while True:
            try:
                data = await self.ws.get_message()
            except ConnectionClosed:
                return
            if isinstance(data, str):
                data = data.encode()
            decoder = protocol.Decoder(self.max_frame)
            for obj in decoder.feed(data):
                yield obj

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send_message(data)
        except ConnectionClosed:
            raise trio.BrokenResourceError("websocket closed") from None

    async def aclose(self) -> None:
        await self.ws.aclose()


async def serve_websocket_rpc(
    server: RPCServer,
    address: str,
    tls: TLSConfig | None,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    host, _, port = address.rpartition(":")
    ssl_context = tls.server_context() if tls else None

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await server.handle_transport(WebSocketTransport(ws, server.max_frame), peer="websocket")

    await serve_websocket(
        handler,
        host,
        int(port),
        ssl_context=ssl_context,
        max_message_size=server.max_frame,
        task_status=task_status,
    )
