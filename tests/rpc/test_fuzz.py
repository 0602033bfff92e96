"""Fuzzing a real engined's RPC (issue 16.6): random bytes, malformed and hostile messages,
random params for read-only methods, over many connections. The daemon must keep serving,
give its memory back (RSS within 20 MB of before) and answer `version` quickly after.
A few thousand frames by default; `pytest --slow` sends many more."""

from __future__ import annotations

import random
import socket
import time

import pytest

from engine.rpc import protocol
from engine.testing.daemon import Daemon

# Methods that only read (a fuzzed call must not pull, load or start anything), the
# streaming one among them, and names that do not exist.
METHODS = ["system.ping", "system.version", "system.info", "system.events", "rpc.describe",
           "container.list", "container.inspect", "container.logs", "container.create",
           "image.list", "image.inspect", "network.list", "no.such", "", "$stream.item"]
FIELDS = ["id", "since", "until", "filters", "all", "image", "labels", "env", "volumes",
          "tail", "follow", "name", "x" * 300]
RSS_SLACK_MB = 20
VERSION_WITHIN = 2.0  # seconds: generous, on a loaded 2-core machine


def rss_mb(d: Daemon) -> float:
    assert d.proc is not None
    for line in open(f"/proc/{d.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, float("nan")])
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(40)))
    if kind == 3:
        return rng.randbytes(rng.randrange(64))
    if kind == 4:
        return rng.choice(["busybox", "/", "../..", "a" * 5000, "type", "container"])
    if kind == 5:
        return rng.uniform(-1e308, 1e308)
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(8))]
    return {rng.choice(FIELDS): random_value(rng, depth + 1) for _ in range(rng.randrange(6))}


def hostile_params(rng: random.Random) -> dict[str, object]:
    """A params map meant to cost the daemon: many keys, long lists of wrong items."""
    n = rng.randrange(1000, 20000)
    kind = rng.randrange(4)
    if kind == 0:
        return {f"k{i}": i for i in range(n)}
    if kind == 1:
        return {"image": "x", "volumes": list(range(n))}
    if kind == 2:
        return {"image": "x", "labels": {f"l{i}": i for i in range(n)}}
    return {"filters": {f"f{i}": [i] for i in range(n)}}


def random_frame(rng: random.Random, msgid: int) -> bytes:
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))  # not msgpack, mostly: closes the connection
    if kind == 1:
        return protocol.pack(random_value(rng))  # msgpack, not a message
    if kind == 2:
        return protocol.encode_notification(
            rng.choice([protocol.CANCEL, protocol.STREAM_ACK, "x"]),
            [rng.randrange(msgid + 1), random_value(rng)])
    if kind == 3:
        return protocol.pack([0, msgid, rng.choice(METHODS), random_value(rng)])
    if kind == 4:
        return protocol.encode_request(msgid, rng.choice(METHODS), hostile_params(rng))
    if kind == 5:
        frame = protocol.encode_request(msgid, rng.choice(METHODS), {"id": "x"})
        return frame[: rng.randrange(1, len(frame))]  # truncated: the next frame continues it
    params = {rng.choice(FIELDS): random_value(rng) for _ in range(rng.randrange(4))}
    return protocol.pack([0, msgid, rng.choice(METHODS), [params]])


def fuzz(d: Daemon, frames: int, seed: int) -> dict[str, int]:
    """Send ``frames`` fuzzed frames; reconnect whenever the daemon closes a connection."""
    rng = random.Random(seed)
    seen = {"responses": 0, "closed": 0, "internal": 0}
    s: socket.socket | None = None
    decoder = protocol.Decoder()
    for i in range(frames):
        if s is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(str(d.socket))
            decoder = protocol.Decoder()
        try:
            s.sendall(random_frame(rng, i))
            s.setblocking(False)
            try:
                while data := s.recv(1 << 20):
                    for obj in decoder.feed(data):
                        if obj[0] == protocol.RESPONSE:
                            seen["responses"] += 1
                            error = obj[2]
                            if isinstance(error, dict) and error.get("code") == "internal":
                                seen["internal"] += 1
                                print("internal error:", error.get("message"))
                else:
                    raise ConnectionResetError  # closed by the daemon
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
                s.settimeout(30)
        except (ConnectionError, OSError, Exception) as e:  # noqa: BLE001 - any end of one connection
            if isinstance(e, AssertionError):
                raise
            seen["closed"] += 1
            s.close()
            s = None
        if rng.randrange(200) == 0 and s is not None:
            s.close()  # a client that goes away with calls in flight
            s = None
    if s is not None:
        s.close()
    return seen


@pytest.mark.timeout(1800)
def test_fuzzed_frames_leave_the_daemon_serving_and_its_memory_back(daemon: Daemon, slow: bool) -> None:
    fuzz(daemon, 300, seed=1)  # warm up: the daemon's lazy imports and caches
    time.sleep(1.5)
    before = rss_mb(daemon)
    frames = 20_000 if slow else 3000
    seen = fuzz(daemon, frames, seed=2)
    assert seen["responses"] > frames // 50 and seen["closed"] > 0  # both paths were exercised
    assert seen["internal"] == 0, "fuzzed input hit a bug (see the printed messages)"
    deadline = time.monotonic() + 20
    while daemon.call("system.info")["Connections"] > 1 or daemon.call("system.info")["EventSubscribers"]:
        assert time.monotonic() < deadline, "fuzzed connections or streams outlived their clients"
        time.sleep(0.1)
    # freed memory goes back at most every TRIM_INTERVAL, in a worker thread: polled (15 s
    # at most), a loaded machine may run that trim late
    deadline = time.monotonic() + 15
    while (after := rss_mb(daemon)) - before > RSS_SLACK_MB and time.monotonic() < deadline:
        time.sleep(0.25)
    assert after - before <= RSS_SLACK_MB, f"RSS {before:.1f} MB -> {after:.1f} MB over {frames} frames"
    started = time.monotonic()
    assert daemon.call("system.version")["ApiVersion"]
    assert time.monotonic() - started < VERSION_WITHIN
