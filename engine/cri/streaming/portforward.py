"""Port forwarding's far end: a TCP connection to a port inside the pod's network namespace,
and the copy between it and the client's data stream (SPDY stream or WebSocket channel).

The connection is made in a fresh thread that enters the pod's namespace (setns with
CLONE_NEWNET; Python 3.11 has no os.setns), creates and connects the socket, and goes back
to its own namespace before it ends: a socket keeps the namespace it was created in. A
thread made for the purpose, not one of trio's cached workers: whatever happens in it, no
worker thread is left in a pod's namespace. A host-network pod's ports are the host's.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from engine.network.netns import call_in_netns

CONNECT_TIMEOUT = 10.0  # seconds
LOCALHOST = "127.0.0.1"
RECEIVE_SIZE = 32 * 1024

def connect_in_netns_blocking(netns_path: str, port: int) -> socket.socket:
    """Blocking: a socket connected to 127.0.0.1:port inside ``netns_path`` (its file)."""
    sock = call_in_netns(
        netns_path, lambda: socket.create_connection((LOCALHOST, port), timeout=CONNECT_TIMEOUT))
    sock.setblocking(False)
    return sock


async def _in_own_thread(fn: Callable[[], socket.socket]) -> socket.socket:
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the trio side
            box["error"] = e
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            if "value" in box:
                box["value"].close()

    threading.Thread(target=main, name="engine-cri-netns-connect", daemon=True).start()
    with trio.CancelScope(shield=True):  # bounded by CONNECT_TIMEOUT; the socket must not leak
        await done.wait()
    if "error" in box:
        raise box["error"]
    sock: socket.socket = box["value"]
    try:
        await trio.lowlevel.checkpoint()
    except BaseException:
        sock.close()
        raise
    return sock


async def connect(netns: str, port: int) -> trio.SocketStream:
    """A trio stream to ``port`` of the pod (its namespace file; "" for the host's)."""
    if not netns:
        with trio.fail_after(CONNECT_TIMEOUT):
            return await trio.open_tcp_stream(LOCALHOST, port)
    sock = await _in_own_thread(lambda: connect_in_netns_blocking(netns, port))
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def forward(pod: trio.SocketStream, receive: Callable[[], Awaitable[bytes]],
                  send: Callable[[bytes], Awaitable[None]], client_reset: Callable[[], bool]) -> None:
    """Copy both ways until the pod's side closes (the client's EOF only half-closes the
    pod connection, as a TCP peer's would), or the client resets the stream."""
    async with trio.open_nursery() as nursery:

        async def client_to_pod() -> None:
            try:
                while data := await receive():
                    await pod.send_all(data)
                if client_reset():
                    nursery.cancel_scope.cancel()
                    return
                await pod.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the pod's side went: pod_to_client sees it end

        async def pod_to_client() -> None:
            try:
                while data := await pod.receive_some(RECEIVE_SIZE):
                    await send(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(client_to_pod)
        nursery.start_soon(pod_to_client)


def error_message(port: int, sandbox_id: str, error: BaseException) -> str:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return (f"error forwarding port {port} to pod {sandbox_id}, uid : failed to connect to "
            f"localhost:{port} inside the pod's network namespace: {text}")
