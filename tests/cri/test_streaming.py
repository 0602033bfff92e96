"""The CRI's streaming server end to end: crictl exec / exec -it / attach / port-forward
(SPDY/3.1, client-go), critest's Streaming specs, WebSocket clients, and bad input."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cri.conftest import CRI
from tests.interactive.pty_session import PtySession, _make_controlling

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"


def _write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _pod(cri: CRI, tmp_path: Path, name: str, *, host_network: bool = False) -> str:
    linux: dict[str, Any] = {}
    if host_network:
        linux = {"security_context": {"namespace_options": {"network": 2}}}
    pod = _write(tmp_path / f"{name}-pod.json", {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "attempt": 0},
        "log_directory": str(tmp_path / "logs"), "linux": linux,
    })
    (tmp_path / "logs").mkdir(exist_ok=True)
    return cri.crictl("runp", pod).stdout.strip()


def _container(cri: CRI, tmp_path: Path, pod_id: str, name: str, command: list[str], **extra: Any) -> str:
    pod_config = json.loads((tmp_path / f"{pod_id_name(cri, pod_id)}-pod.json").read_text())
    ctr = _write(tmp_path / f"{name}-ctr.json", {
        "metadata": {"name": name}, "image": {"image": BUSYBOX}, "command": command,
        "log_path": f"{name}.log", "linux": {}, **extra,
    })
    pod_file = tmp_path / f"{name}-podcfg.json"
    pod_file.write_text(json.dumps(pod_config))
    ctr_id = cri.crictl("create", pod_id, ctr, str(pod_file)).stdout.strip()
    cri.crictl("start", ctr_id)
    return ctr_id


def pod_id_name(cri: CRI, pod_id: str) -> str:
    return json.loads(cri.crictl("inspectp", pod_id).stdout)["status"]["metadata"]["name"]


@pytest.fixture
def running(cri: CRI, tmp_path: Path) -> tuple[CRI, str, str]:
    cri.crictl("pull", BUSYBOX)
    pod_id = _pod(cri, tmp_path, "stream")
    ctr_id = _container(cri, tmp_path, pod_id, "sleeper", ["sleep", "3600"])
    return cri, pod_id, ctr_id


def test_crictl_exec_output_and_exit_code(running: tuple[CRI, str, str]) -> None:
    cri, _pod_id, ctr = running
    out = cri.crictl("exec", ctr, "sh", "-c", "echo to-out; echo to-err >&2")
    assert out.stdout == "to-out\n"
    assert "to-err\n" in out.stderr
    failed = cri.crictl("exec", ctr, "sh", "-c", "echo partial; exit 7", check=False)
    assert failed.stdout == "partial\n"
    # crictl 1.26 (client-go 0.26) turns the status's exit code into its error message and
    # exits 1 itself: the code came back through the error stream
    assert failed.returncode == 1
    assert "command terminated with exit code 7" in failed.stderr, failed.stderr


def test_critest_streaming_specs_pass(cri: CRI, tmp_path: Path) -> None:
    """critest's 5 Streaming specs (exec with and without a terminal, attach, port-forward
    in a pod and in a host-network pod) drive client-go's SPDY clients against us."""
    report = tmp_path / "report.json"
    env = {**os.environ, "PATH": f"{cri.bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(cri.bin_dir / "critest"), "--runtime-endpoint", cri.endpoint, "--image-endpoint",
         cri.endpoint, "--ginkgo.no-color", "--ginkgo.focus=Streaming",
         f"--ginkgo.json-report={report}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    specs = json.loads(report.read_text())[0]["SpecReports"]
    outcome = {s["LeafNodeText"]: s["State"] for s in specs if s["LeafNodeType"] == "It"}
    ran = {name: state for name, state in outcome.items() if state != "skipped"}
    assert len(ran) == 5, f"{ran}\n{proc.stdout[-3000:]}"
    failed = sorted(name for name, state in ran.items() if state != "passed")
    assert not failed, f"failed: {failed}\n--- critest ---\n{proc.stdout[-4000:]}\n--- daemon ---\n" \
        f"{cri.daemon.log()[-3000:]}"


class CrictlPty(PtySession):
    """crictl with a real pseudo-terminal as its stdio and controlling terminal."""

    def __init__(self, cri: CRI, args: list[str], *, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.settings_before = self.stty_g()
        self.proc = subprocess.Popen(
            [str(cri.crictl_bin), "-r", cri.endpoint, "-i", cri.endpoint, *args],
            stdin=self.slave, stdout=self.slave, stderr=self.slave,
            env={**os.environ, "TERM": "xterm"}, start_new_session=True,
            preexec_fn=_make_controlling, close_fds=True)
        self.seen = b""


def test_crictl_exec_it_under_a_terminal(running: tuple[CRI, str, str]) -> None:
    cri, _pod_id, ctr = running
    term = CrictlPty(cri, ["exec", "-it", ctr, "sh"], rows=33, cols=101)
    try:
        term.expect(r"# ")
        term.send(b"stty size; echo sum=$((6*7)); tty\r")
        term.expect(r"33 101")  # the window size came through the resize stream
        term.expect(r"sum=42")
        term.expect(r"/dev/pts/\d+")  # a terminal of its own in the container
        term.resize(40, 120)  # SIGWINCH: crictl sends the new size
        # ask until the new size shows: the resize travels (crictl, the daemon, conmon) meanwhile
        deadline = time.monotonic() + 20
        term.send(b"stty size\r")
        while (shown := term.expect(rb"\r\n(\d+ \d+)\r\n")[1]) != b"40 120":
            assert time.monotonic() < deadline, f"the terminal stayed {shown!r}"
            time.sleep(0.2)
            term.send(b"stty size\r")
        term.send(b"exit 3\r")
        assert term.wait(30) == 1
        term.expect(r"command terminated with exit code 3")
        assert term.stty_g() == term.settings_before  # crictl put the terminal back
    finally:
        term.close()


def test_crictl_attach_to_a_shell_with_tty_and_stdin(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    pod_id = _pod(cri, tmp_path, "attach")
    ctr = _container(cri, tmp_path, pod_id, "shell", ["sh"], tty=True, stdin=True)
    term = CrictlPty(cri, ["attach", "-it", ctr])
    try:
        time.sleep(1)
        term.send(b"echo attached=$((5*5))\r")
        term.expect(r"attached=25")
        term.send(b"\x10\x11")  # ctrl-p ctrl-q: crictl detaches, the shell runs on
        assert term.wait(30) == 0
    finally:
        term.close()
    state = json.loads(cri.crictl("inspect", ctr).stdout)["status"]["state"]
    assert state == "CONTAINER_RUNNING"
    # and a second attach reaches the same shell
    term = CrictlPty(cri, ["attach", "-it", ctr])
    try:
        time.sleep(1)
        term.send(b"echo again=$((2+2)); exit 0\r")
        term.expect(r"again=4")
        assert term.wait(30) == 0
    finally:
        term.close()
    assert _wait_for(lambda: json.loads(cri.crictl("inspect", ctr).stdout)["status"]["state"]
                     == "CONTAINER_EXITED")


def test_crictl_attach_without_tty_ends_with_the_clients_stdin(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    pod_id = _pod(cri, tmp_path, "attach-pipe")
    ctr = _container(cri, tmp_path, pod_id, "shell", ["sh"], stdin=True)
    proc = subprocess.Popen([str(cri.crictl_bin), "-r", cri.endpoint, "attach", "-i", ctr],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        time.sleep(1)
        proc.stdin.write(b"echo to-err >&2; echo piped\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"piped\n"
        # stderr comes by a stream of its own, maybe after stdout: wait for it before ending
        assert proc.stderr is not None and select.select([proc.stderr], [], [], 20)[0], "no stderr"
        assert proc.stderr.readline() == b"to-err\n"
        out, err = proc.communicate(timeout=30)  # closes crictl's stdin: the session ends
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == b"" and err == b""
    # the client's stdin ended the session, not the container's (no stdin_once)
    assert json.loads(cri.crictl("inspect", ctr).stdout)["status"]["state"] == "CONTAINER_RUNNING"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _http_get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as resp:
        return bytes(resp.read())


def _port_forward(cri: CRI, pod_id: str, local: int, remote: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(cri.crictl_bin), "-r", cri.endpoint, "port-forward", pod_id,
                             f"{local}:{remote}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc


def _fetch_through(cri: CRI, pod_id: str, remote: int, expected: bytes) -> None:
    local = _free_port()
    proc = _port_forward(cri, pod_id, local, remote)
    try:
        got: list[bytes] = []

        def fetched() -> bool:
            try:
                got.append(_http_get(local))
                return True
            except OSError:
                return False

        if not _wait_for(fetched, 20):
            proc.terminate()
            output = proc.communicate(timeout=10)[0].decode()
            raise AssertionError(f"port-forward never answered: {output}\n{cri.daemon.log()[-2000:]}")
        assert got[-1] == expected
        # several connections through one forward, one after the other and at once
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert list(pool.map(lambda _: _http_get(local), range(8))) == [expected] * 8
    finally:
        proc.terminate()
        proc.wait(10)


def test_crictl_port_forward_to_a_pod(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    pod_id = _pod(cri, tmp_path, "pf")
    page = "forwarded through the pod network namespace"
    web = _container(cri, tmp_path, pod_id, "web", [
        "sh", "-c", f"mkdir -p /www && echo '{page}' > /www/index.html && exec httpd -f -p 8080 -h /www"])
    # client-go gives a forward up at its first error: start it once httpd listens
    assert _wait_for(lambda: re.search(r":1F90 0+:0000 0A", cri.crictl(
        "exec", web, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout))
    _fetch_through(cri, pod_id, 8080, f"{page}\n".encode())
    # nothing listens on the host's 8080 that could have answered instead
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", 8080), timeout=1):
        pass


def test_crictl_port_forward_to_a_host_network_pod(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    pod_id = _pod(cri, tmp_path, "pf-host", host_network=True)
    port = _free_port()
    page = "served on the host network"
    _container(cri, tmp_path, pod_id, "web", [
        "sh", "-c", f"mkdir -p /tmp/www && echo '{page}' > /tmp/www/index.html && "
                    f"exec httpd -f -p 127.0.0.1:{port} -h /tmp/www"])
    assert _wait_for(lambda: _listening(port))
    _fetch_through(cri, pod_id, port, f"{page}\n".encode())


def test_port_forward_to_a_closed_port_reports_the_error(cri: CRI, tmp_path: Path) -> None:
    cri.crictl("pull", BUSYBOX)
    pod_id = _pod(cri, tmp_path, "pf-closed")
    local = _free_port()
    proc = _port_forward(cri, pod_id, local, 9)
    try:
        def connected() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=2) as s:
                    s.settimeout(10)
                    s.recv(10)  # the forward ends: crictl closes the local connection
                return True
            except OSError:
                return False

        assert _wait_for(connected, 20)
        assert _wait_for(lambda: proc.poll() is not None, 15)  # client-go ends on an error
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert "error forwarding port 9" in output and "connection refused" in output.lower(), output
    finally:
        proc.kill()
        proc.wait(10)
    cri.crictl("version")


# --- direct clients: gRPC for the URLs, WebSocket and hand-made SPDY for the streams ---------


def _runtime(cri: CRI) -> Any:
    import grpc

    from engine.cri.gen import api_pb2_grpc

    channel = grpc.insecure_channel(cri.endpoint.replace("unix://", "unix:"))
    return api_pb2_grpc.RuntimeServiceStub(channel)


def _exec_url(cri: CRI, ctr: str, cmd: list[str], **flags: bool) -> str:
    from engine.cri.gen import api_pb2 as pb

    request = pb.ExecRequest(container_id=ctr, cmd=cmd, stdout=True, **{"stderr": True, **flags})
    return str(_runtime(cri).Exec(request, timeout=30).url)


def _ws_collect(ws: Any) -> dict[int, bytes]:
    import websocket

    got: dict[int, bytearray] = {}
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return {k: bytes(v) for k, v in got.items()}
        if data:
            got.setdefault(data[0], bytearray()).extend(data[1:])


def test_websocket_exec_v4_output_and_exit_code(running: tuple[CRI, str, str]) -> None:
    import websocket

    cri, _pod_id, ctr = running
    url = _exec_url(cri, ctr, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/exec/[A-Za-z0-9_-]{32,}", url), url
    ws = websocket.create_connection(url.replace("http://", "ws://"), subprotocols=["v4.channel.k8s.io"],
                                     timeout=30)
    try:
        assert ws.getsubprotocol() == "v4.channel.k8s.io"
        got = _ws_collect(ws)
    finally:
        ws.close()
    assert got[1] == b"out\n" and got[2] == b"err\n"
    status = json.loads(got[3])
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_websocket_exec_v5_stdin_and_its_close(running: tuple[CRI, str, str]) -> None:
    import websocket

    cri, _pod_id, ctr = running
    url = _exec_url(cri, ctr, ["sh", "-c", "tr a-z A-Z; echo done"], stdin=True)
    ws = websocket.create_connection(url.replace("http://", "ws://"), subprotocols=["v5.channel.k8s.io"],
                                     timeout=30)
    try:
        ws.send_binary(b"\x00hello ")
        ws.send_binary(b"\x00websocket\n")
        ws.send_binary(b"\xff\x00")  # v5: the client closes its stdin
        got = _ws_collect(ws)
    finally:
        ws.close()
    assert got[1] == b"HELLO WEBSOCKET\ndone\n"
    assert json.loads(got[3])["status"] == "Success"


def test_websocket_base64_protocol(running: tuple[CRI, str, str]) -> None:
    import base64

    import websocket

    cri, _pod_id, ctr = running
    url = _exec_url(cri, ctr, ["printf", "\\001\\002bin"])
    ws = websocket.create_connection(url.replace("http://", "ws://"),
                                     subprotocols=["v4.base64.channel.k8s.io"], timeout=30)
    out = b""
    try:
        while True:
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            text = data.decode()
            if text[:1] == "1":
                out += base64.b64decode(text[1:])
    finally:
        ws.close()
    assert out == b"\x01\x02bin"


def test_websocket_port_forward(cri: CRI, tmp_path: Path) -> None:
    import websocket

    from engine.cri.gen import api_pb2 as pb

    cri.crictl("pull", BUSYBOX)
    pod_id = _pod(cri, tmp_path, "wspf")
    web = _container(cri, tmp_path, pod_id, "web", [
        "sh", "-c", "mkdir -p /www && echo websocket-page > /www/index.html && exec httpd -f -p 8080 -h /www"])
    assert _wait_for(lambda: re.search(r":1F90 0+:0000 0A", cri.crictl(
        "exec", web, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout))
    url = _runtime(cri).PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080]), timeout=30).url
    ws = websocket.create_connection(url.replace("http://", "ws://"), subprotocols=["portforward.k8s.io"],
                                     timeout=30)
    try:
        ws.send_binary(b"\x00GET /index.html HTTP/1.0\r\n\r\n")
        got = _ws_collect(ws)
    finally:
        ws.close()
    port = (8080).to_bytes(2, "little")
    assert got[0].startswith(port) and got[1] == port  # each channel opens with the port
    response = got[0][2:]
    assert response.startswith(b"HTTP/1.") and response.endswith(b"websocket-page\n"), response


def test_websocket_refuses_foreign_origins_and_unknown_protocols(running: tuple[CRI, str, str]) -> None:
    import websocket

    cri, _pod_id, ctr = running
    url = _exec_url(cri, ctr, ["true"]).replace("http://", "ws://")
    with pytest.raises(websocket.WebSocketBadStatusException) as bad:
        websocket.create_connection(url, origin="http://evil.example", timeout=10)
    assert bad.value.status_code == 403
    url = _exec_url(cri, ctr, ["true"]).replace("http://", "ws://")
    with pytest.raises(websocket.WebSocketBadStatusException) as bad:
        websocket.create_connection(url, subprotocols=["v9.channel.k8s.io"], timeout=10)
    assert bad.value.status_code == 400
    assert b"v4.channel.k8s.io" in (bad.value.resp_body or b"")


def _raw_request(url: str, headers: dict[str, str], method: str = "POST") -> tuple[socket.socket, int, str, bytes]:
    """Send a request by hand; (socket, status, head, what followed the head)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Length: 0",
             *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    return sock, status, head.decode("latin-1"), rest


SPDY_HEADERS = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "v4.channel.k8s.io"}


def _body(sock: socket.socket, rest: bytes) -> bytes:
    sock.settimeout(5)
    try:
        while len(rest) < 200 and (chunk := sock.recv(65536)):
            rest += chunk
    except OSError:
        pass
    return rest


@pytest.fixture
def short_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_CRI_STREAMING_TOKEN_TTL", "2")


def test_bad_tokens_protocols_and_garbage(short_ttl: None, running: tuple[CRI, str, str]) -> None:
    cri, _pod_id, ctr = running
    url = _exec_url(cri, ctr, ["true"])
    base = url.rsplit("/exec/", 1)[0]
    # an unknown token, and a token of another kind
    for path in ("/exec/nosuchtoken", "/portforward/" + url.rsplit("/", 1)[1], "/", "/exec/../x"):
        sock, status, _head, _rest = _raw_request(base + path, SPDY_HEADERS)
        sock.close()
        assert status == 404, path
    # the token was consumed by the wrong-kind request above: single use
    sock, status, _head, _rest = _raw_request(url, SPDY_HEADERS)
    sock.close()
    assert status == 404
    # a protocol we do not speak: 400 naming the ones we do
    sock, status, head, rest = _raw_request(_exec_url(cri, ctr, ["true"]),
                                            {**SPDY_HEADERS, "X-Stream-Protocol-Version": "v9.channel.k8s.io"})
    body = _body(sock, rest)
    sock.close()
    assert status == 400 and b"v4.channel.k8s.io" in body, body
    assert "X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io" in head
    # no upgrade at all
    sock, status, _head, rest = _raw_request(_exec_url(cri, ctr, ["true"]), {}, method="GET")
    body = _body(sock, rest)
    sock.close()
    assert status == 400 and b"SPDY/3.1" in body
    # an expired token (the daemon runs with a 2 s lifetime here)
    stale = _exec_url(cri, ctr, ["true"])
    time.sleep(2.5)
    sock, status, _head, _rest = _raw_request(stale, SPDY_HEADERS)
    sock.close()
    assert status == 404
    # garbage instead of HTTP
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(512) + b"\r\n\r\n")
        reply = _body(sock, b"")
    assert reply == b"" or reply.startswith(b"HTTP/1.1 400"), reply
    # the daemon serves on
    assert cri.crictl("exec", ctr, "echo", "still-up").stdout == "still-up\n"


def _spdy_session(cri: CRI, ctr: str, cmd: list[str]) -> tuple[socket.socket, Any]:
    """A hand-made SPDY client: upgrade, open error/stdout/stderr, wait for their replies."""
    from engine.cri.streaming import spdy

    sock, status, _head, rest = _raw_request(_exec_url(cri, ctr, cmd), SPDY_HEADERS)
    assert status == 101
    codec = spdy.SpdyCodec()
    for stream_id, kind in ((1, "error"), (3, "stdout"), (5, "stderr")):
        sock.sendall(codec.encode(spdy.SynStream(stream_id, {"streamtype": [kind]})))
    codec.receive_data(rest)
    replies: set[int] = set()
    deadline = time.monotonic() + 10
    while len(replies) < 3 and time.monotonic() < deadline:
        replies |= {f.stream_id for f in codec.frames() if isinstance(f, spdy.SynReply)}
        if len(replies) < 3:
            codec.receive_data(sock.recv(65536))
    assert replies == {1, 3, 5}
    return sock, codec


def _processes(cri: CRI, ctr: str) -> str:
    return str(cri.crictl("exec", "-s", ctr, "ps", "-o", "args").stdout)


def test_a_client_that_vanishes_mid_exec_kills_the_process(running: tuple[CRI, str, str]) -> None:
    cri, _pod_id, ctr = running
    sock, _codec = _spdy_session(cri, ctr, ["sleep", "4321"])
    assert _wait_for(lambda: "sleep 4321" in _processes(cri, ctr))
    sock.close()  # gone without a word
    assert _wait_for(lambda: "sleep 4321" not in _processes(cri, ctr), 20)
    assert "Traceback" not in cri.daemon.log()
    assert cri.crictl("exec", ctr, "echo", "fine").stdout == "fine\n"


def test_a_frame_with_an_absurd_length_closes_the_connection(running: tuple[CRI, str, str]) -> None:
    import struct

    from engine.cri.streaming import spdy

    cri, _pod_id, ctr = running
    sock, codec = _spdy_session(cri, ctr, ["sleep", "4322"])
    assert _wait_for(lambda: "sleep 4322" in _processes(cri, ctr))
    sock.sendall(struct.pack(">II", 3, 0xFFFFFF) + b"x" * 100)  # 16 MiB of stdout data promised
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    codec.receive_data(data)
    assert spdy.GoAway(5, spdy.GOAWAY_PROTOCOL_ERROR) in list(codec.frames())
    sock.close()
    assert _wait_for(lambda: "sleep 4322" not in _processes(cri, ctr), 20)
    assert cri.crictl("exec", ctr, "echo", "fine").stdout == "fine\n"


def test_exec_and_attach_requests_are_checked(running: tuple[CRI, str, str]) -> None:
    import grpc

    from engine.cri.gen import api_pb2 as pb

    cri, pod_id, ctr = running
    runtime = _runtime(cri)
    cases = [
        (runtime.Exec, pb.ExecRequest(container_id=ctr, cmd=["true"], tty=True, stderr=True),
         grpc.StatusCode.INVALID_ARGUMENT),
        (runtime.Exec, pb.ExecRequest(container_id=ctr, cmd=["true"]), grpc.StatusCode.INVALID_ARGUMENT),
        (runtime.Exec, pb.ExecRequest(container_id="nosuch", cmd=["true"], stdout=True), grpc.StatusCode.NOT_FOUND),
        (runtime.Attach, pb.AttachRequest(container_id=ctr, tty=True, stdout=True),
         grpc.StatusCode.INVALID_ARGUMENT),  # it has no terminal
        (runtime.PortForward, pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[70000]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (runtime.PortForward, pb.PortForwardRequest(pod_sandbox_id="nosuch"), grpc.StatusCode.NOT_FOUND),
    ]
    for method, request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            method(request, timeout=30)
        assert err.value.code() == code, (request, err.value)
    cri.crictl("stop", ctr)
    with pytest.raises(grpc.RpcError) as err:
        runtime.Exec(pb.ExecRequest(container_id=ctr, cmd=["true"], stdout=True), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_daemon_stop_ends_sessions_and_the_address_option(running: tuple[CRI, str, str]) -> None:
    """Stopping the daemon ends the streaming server with it (the session's connection goes,
    its exec'd process runs on under its conmon, as the container does: live-restore);
    restarted with --cri-streaming-address, the URLs use that address."""
    cri, _pod_id, ctr = running
    session = subprocess.Popen([str(cri.crictl_bin), "-r", cri.endpoint, "exec", ctr, "sleep", "4323"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: "sleep 4323" in _processes(cri, ctr))
        assert cri.daemon.stop(30) == 0
        session.wait(30)  # the connection went with the daemon
    finally:
        session.kill()
        session.wait(10)
    port = _free_port()
    cri.daemon.extra_args += ["--cri-streaming-address", f"127.0.0.1:{port}"]
    cri.daemon.start()
    assert _exec_url(cri, ctr, ["true"]).startswith(f"http://127.0.0.1:{port}/exec/")
    assert "sleep 4323" in _processes(cri, ctr)  # the container ran on, and so did the exec
    assert cri.crictl("exec", ctr, "echo", "back").stdout == "back\n"
