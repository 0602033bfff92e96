"""A FaultProxy that can also *stall* a response: send the head and the first N body bytes,
then hold the connection open without sending more, until released. A pull is then
reliably in the middle of a download, however fast loopback is."""

from __future__ import annotations

import socket
import threading

import attrs

from engine.testing.registry import FaultProxy, _read_request


@attrs.define
class Stall:
    path: str  # requests whose path contains this (GET only), once
    after_bytes: int
    reached: threading.Event = attrs.field(factory=threading.Event)
    release: threading.Event = attrs.field(factory=threading.Event)
    used: bool = False


class StallProxy(FaultProxy):
    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.stalls: list[Stall] = []

    def stall(self, path: str, after_bytes: int) -> Stall:
        stall = Stall(path, after_bytes)
        self.stalls.append(stall)
        return stall

    def stop(self) -> None:
        for stall in self.stalls:
            stall.release.set()
        super().stop()

    def _take_stall(self, method: str, path: str) -> Stall | None:
        with self._lock:
            for stall in self.stalls:
                if not stall.used and method == "GET" and stall.path in path:
                    stall.used = True
                    return stall
        return None

    def _serve(self, conn: socket.socket) -> None:
        # Replaces the parent's handler: requests are forwarded whole or stalled; the
        # parent's cut/corrupt/status faults are not applied here.
        conn.settimeout(30)
        try:
            head, body = _read_request(conn)
            if head is None:
                conn.close()
                return
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].decode().split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (ln.decode().partition(":") for ln in lines[1:] if ln)
            }
            stall = self._take_stall(method, target)
            if stall is None:
                self._pass_through(conn, lines, body, method, target, headers)
                return
            status, response_head, response_body = self._forward(lines, body)
            sent = response_body[: stall.after_bytes]
            conn.sendall(response_head + sent)
            self._record(method, target, headers, status, len(sent), None)
            stall.reached.set()
            stall.release.wait(timeout=120)
        except OSError:
            pass
        finally:
            conn.close()

    def _pass_through(self, conn: socket.socket, lines: list[bytes], body: bytes, method: str,
                      target: str, headers: dict[str, str]) -> None:
        status, response_head, response_body = self._forward(lines, body)
        conn.sendall(response_head + response_body)
        self._record(method, target, headers, status, len(response_body), None)
