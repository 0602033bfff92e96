"""A real engined process: bad input on one connection never stops it serving others."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.errors import InvalidArgument, MethodNotFound, ProtocolError
from engine.rpc import protocol
from engine.testing.daemon import Daemon


def raw_socket(d: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(d.socket))
    return s


def read_messages(s: socket.socket, count: int = 1) -> list[object]:
    decoder = protocol.Decoder()
    got: list[object] = []
    while len(got) < count:
        data = s.recv(65536)
        if not data:
            break
        got.extend(decoder.feed(data))
    return got


def assert_still_serving(d: Daemon) -> None:
    assert d.call("system.ping") == "pong"


def test_ping_version_info(daemon: Daemon) -> None:
    assert daemon.call("system.ping") == "pong"
    version = daemon.call("system.version")
    assert version["Version"] and version["ApiVersion"] == "1.0"
    info = daemon.call("system.info")
    assert info["Root"] == str(daemon.root) and info["RunRoot"] == str(daemon.run_root)
    assert {"runc", "crun"} <= {r["name"] for r in info["Runtimes"]} or info["Plugins"]["failed"]
    describe = daemon.call("rpc.describe")
    names = {m["name"] for m in describe["methods"]}
    assert {"system.ping", "system.version", "system.info", "system.events"} <= names
    assert describe["stream_window"] == protocol.STREAM_WINDOW


def test_socket_mode_is_0660(daemon: Daemon) -> None:
    st = daemon.socket.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660


def test_unknown_method_and_wrong_types(daemon: Daemon) -> None:
    with daemon.client() as c:
        with pytest.raises(MethodNotFound, match="no.such"):
            c.call("no.such")
        with pytest.raises(InvalidArgument, match=r"since"):
            c.call("system.events", since="yesterday")
        with pytest.raises(InvalidArgument, match=r"extra fields.*bogus"):
            c.call("system.events", bogus=1)
        assert c.call("system.ping") == "pong"  # same connection still usable


def test_malformed_request_shape_gets_an_error_response(daemon: Daemon) -> None:
    s = raw_socket(daemon)
    s.sendall(protocol.pack([0, 5, 42, []]))  # method not a string
    (reply,) = read_messages(s)
    assert reply[0] == 1 and reply[1] == 5 and reply[2]["code"] == ProtocolError.code
    s.sendall(protocol.encode_request(6, "system.ping"))
    (reply,) = read_messages(s)
    assert reply == [1, 6, None, "pong"]
    s.close()


def test_garbage_bytes_close_that_connection_only(daemon: Daemon) -> None:
    other = daemon.client()
    s = raw_socket(daemon)
    s.sendall(b"\xc1\xc1\xc1 this is not msgpack")
    (note,) = read_messages(s)
    assert note[0] == 2 and note[1] == "$error" and note[2][0]["code"] == "protocol_error"
    assert s.recv(10) == b""  # closed
    assert other.call("system.ping") == "pong"
    other.close()
    assert_still_serving(daemon)


def test_truncated_frame_then_disconnect(daemon: Daemon) -> None:
    data = protocol.encode_request(1, "system.info", {"padding": "x" * 100})
    s = raw_socket(daemon)
    s.sendall(data[: len(data) // 2])
    s.close()
    assert_still_serving(daemon)


def test_frame_over_the_limit_is_refused(daemon: Daemon) -> None:
    s = raw_socket(daemon)
    big = protocol.encode_request(1, "system.ping", {"blob": b"\0" * (protocol.MAX_FRAME + 1024)})
    try:
        s.sendall(big)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon may close before reading all of it
    notes = []
    try:
        notes = read_messages(s)
    except ConnectionResetError:
        pass
    if notes:
        assert notes[0][1] == "$error" and notes[0][2][0]["code"] == "resource_exhausted"
    s.close()
    assert_still_serving(daemon)


def test_client_disconnect_mid_stream_cancels_it(daemon: Daemon) -> None:
    c = daemon.client()
    stream = c.stream("system.events", since=0.0)
    first = next(iter(stream))
    assert first["Type"] == "daemon" and first["Action"] == "start"
    assert daemon.call("system.info")["EventSubscribers"] == 1
    c.close()
    deadline = time.monotonic() + 5
    while daemon.call("system.info")["EventSubscribers"] != 0:
        assert time.monotonic() < deadline, "the stream outlived its client"
        time.sleep(0.05)


def test_many_clients_at_once(daemon: Daemon) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with daemon.client() as c:
                for _ in range(20):
                    assert c.call("system.ping") == "pong"
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_second_daemon_on_the_same_root_is_refused(daemon: Daemon) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "engine.supervisor.daemon", "--root", str(daemon.root),
         "--run-root", str(daemon.base / "run2")],
        capture_output=True, text=True, timeout=30,
    )
    assert second.returncode == 1
    assert "another engined" in second.stderr and str(daemon.root) in second.stderr
    assert_still_serving(daemon)


def test_config_file_errors_name_the_key(tmp_path: Path) -> None:
    def run_with(config: object) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "daemon.json"
        path.write_text(json.dumps(config))
        return subprocess.run(
            [sys.executable, "-m", "engine.supervisor.daemon", "--config", str(path),
             "--root", str(tmp_path / "r"), "--run-root", str(tmp_path / "rr")],
            capture_output=True, text=True, timeout=30,
        )

    bad_key = run_with({"log-level": "info", "no-such-key": 1})
    assert bad_key.returncode == 1 and "no-such-key" in bad_key.stderr
    bad_type = run_with({"insecure-registries": "127.0.0.1:5000"})
    assert bad_type.returncode == 1 and "insecure_registries" in bad_type.stderr
    bad_level = run_with({"log-level": "loud"})
    assert bad_level.returncode == 1 and "loud" in bad_level.stderr


def test_flags_win_over_the_file_and_sighup_reloads() -> None:
    d = Daemon(config={"default-runtime": "crun", "log-level": "info", "insecure-registries": []},
               extra_args=["--default-runtime", "runc"])
    d.start()
    try:
        assert d.call("system.info")["DefaultRuntime"] == "runc"  # the flag won
        path = d.base / "daemon.json"
        path.write_text(json.dumps({"default-runtime": "crun", "log-level": "debug",
                                    "insecure-registries": ["127.0.0.1:5999"], "storage-driver": "vfs"}))
        with d.client() as c:
            events = c.stream("system.events", filters={"type": ["daemon"], "event": ["reload"]})
            deadline = time.monotonic() + 5
            while d.call("system.info")["EventSubscribers"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            event = next(iter(events))
        attrs = event["Actor"]["Attributes"]
        # log-level and default-runtime are fixed by flags, so only the registries change.
        assert attrs["changed"] == ["insecure_registries"]
        assert attrs["needs_restart"] == ["storage_driver"]
        assert d.call("system.info")["DefaultRuntime"] == "runc"  # flags still win on reload
    finally:
        d.cleanup()


def test_sigterm_shuts_down_cleanly() -> None:
    d = Daemon()
    d.start()
    try:
        assert d.stop() == 0
        assert not d.socket.exists()
        assert "engined stopped" in d.log()
    finally:
        d.cleanup()


def test_engctl_version_info_and_exit_codes(daemon: Daemon) -> None:
    engctl = [sys.executable, "-m", "engine.cli.main"]
    env = {**os.environ, "ENGINE_HOST": daemon.host}
    out = subprocess.run([*engctl, "version"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and "Server: engine" in out.stdout
    out = subprocess.run([*engctl, "info", "--format", "json"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout)["Root"] == str(daemon.root)
    out = subprocess.run([*engctl, "-H", "unix:///nonexistent.sock", "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 125 and "is engined running" in out.stderr


def test_cli_path_does_not_import_trio() -> None:
    code = ("import sys, engine.cli.main as m; m.build_parser(); "
            "bad = [n for n in ('trio', 'httpx', 'cattrs', 'pluggy') if n in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
