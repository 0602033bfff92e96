"""A real registry for tests: docker-registry (CNCF distribution) on 127.0.0.1.

Reusable by every integration test::

    with registry_server(tmp_path) as reg:            # plain HTTP
        push_layout(layout_dir, "latest", reg, "test/busybox:latest")
        ... pull f"{reg.host}/test/busybox:latest" with insecure-registries=[reg.host]

Variants: ``tls=True`` (a trustme CA; ``reg.ca_pem`` is its certificate, ``install_ca``
puts it in a ``certs.d`` tree), ``users={"alice": "secret"}`` (htpasswd Basic auth, bcrypt
via ``htpasswd -Bbn``), ``token=TokenServer(...)`` (token auth: a small JWT server of our own
signs ES256 tokens with a key whose CA is the registry's ``rootcertbundle``).

``FaultProxy`` sits in front of a registry and injects faults: cut a response after N body
bytes, corrupt body bytes, answer a status (500/429 with Retry-After) a number of times.
It also records every request (method, path, Range, body bytes sent).

Everything here is synchronous (subprocesses and threads), so fixtures can use it from any
test. Every process and thread is stopped by the context managers, even on failure.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from engine.testing.daemon import require_binary

REGISTRY_BIN = "docker-registry"
_START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"docker-registry exited with {proc.returncode}:\n{text}")
        # Our registry's own word that it listens: a port taken meanwhile by another
        # process (free_port probes, then the registry binds) would answer a connect too.
        if log is not None and f"listening on 127.0.0.1:{port}" not in log.read_text(errors="replace"):
            time.sleep(0.05)
            continue
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {_START_TIMEOUT}s")


# --- TLS material ----------------------------------------------------------------------------


@attrs.frozen
class TLSFiles:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


def make_tls(directory: Path, *identities: str) -> TLSFiles:
    """A fresh CA and a server certificate for ``identities`` (default 127.0.0.1)."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(*(identities or ("127.0.0.1",)))
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_pem))
    leaf.private_key_pem.write_to_path(str(files.key_pem))
    files.cert_pem.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    return files


def install_ca(certs_dir: Path, host: str, ca_pem: Path) -> Path:
    """Put ``ca_pem`` where the engine looks for a registry's CA: certs.d/HOST:PORT/ca.crt."""
    target = certs_dir / host / "ca.crt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(ca_pem.read_bytes())
    return target


# --- token server ----------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A docker-distribution token server on loopback (thread), signing ES256 JWTs.

    ``users`` may do everything they ask for; anonymous callers get ``anonymous_actions``
    (none by default, so the registry denies them). Wrong passwords get 401."""

    service = "engine-test-registry"
    issuer = "engine-test-issuer"

    def __init__(
        self,
        directory: Path,
        users: dict[str, str],
        *,
        anonymous_actions: tuple[str, ...] = (),
        lifetime: int = 300,
    ) -> None:
        import trustme

        self.users = users
        self.anonymous_actions = anonymous_actions
        self.lifetime = lifetime
        self.requests: list[dict[str, Any]] = []
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        self._leaf = ca.issue_cert("engine-test-token-signer")
        self.rootcertbundle = directory / "token-ca.pem"
        ca.cert_pem.write_to_path(str(self.rootcertbundle))
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def issue(self, user: str | None, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            granted = (
                wanted if user is not None else [a for a in wanted if a in self.anonymous_actions]
            )
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return self._sign(claims)

    def _sign(self, claims: dict[str, Any]) -> str:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        cert = x509.load_pem_x509_certificate(self._leaf.cert_chain_pems[0].bytes())
        key = serialization.load_pem_private_key(self._leaf.private_key_pem.bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + _b64url(signature)


def _token_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            query = parse_qs(urlsplit(self.path).query)
            user = self._user()
            server.requests.append({"user": user, "query": query})
            if user is False:
                self._reply(401, {"details": "invalid username or password"})
                return
            token = server.issue(user if isinstance(user, str) else None, query.get("scope", []))
            self._reply(200, {"token": token, "access_token": token, "expires_in": server.lifetime})

        def _user(self) -> str | bool | None:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user if server.users.get(user) == password else False

        def _reply(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


# --- the registry ----------------------------------------------------------------------------


@attrs.define
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    tls: TLSFiles | None = None
    users: dict[str, str] = attrs.field(factory=dict)

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _htpasswd_file(directory: Path, users: dict[str, str]) -> Path:
    htpasswd = require_binary("htpasswd")
    lines = []
    for user, password in users.items():
        out = subprocess.run(
            [htpasswd, "-Bbn", user, password], check=True, capture_output=True, timeout=30
        )
        lines.append(out.stdout.decode().strip())
    path = directory / "htpasswd"
    path.write_text("\n".join(lines) + "\n")
    return path


def registry_config(
    root: Path,
    port: int,
    *,
    tls: TLSFiles | None = None,
    users: dict[str, str] | None = None,
    token: TokenServer | None = None,
    schema1: bool = False,
) -> dict[str, Any]:
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex}
    if tls is not None:
        http["tls"] = {"certificate": str(tls.cert_pem), "key": str(tls.key_pem)}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "redirect": {"disable": True},
        },
        "http": http,
    }
    if users:
        config["auth"] = {
            "htpasswd": {"realm": "engine-test", "path": str(_htpasswd_file(root, users))}
        }
    if token is not None:
        config["auth"] = {
            "token": {
                "realm": token.realm,
                "service": token.service,
                "issuer": token.issuer,
                "rootcertbundle": str(token.rootcertbundle),
            }
        }
    if schema1:
        config["compatibility"] = {"schema1": {"enabled": True}}
    return config


@contextmanager
def registry_server(
    tmp: Path,
    *,
    tls: bool | TLSFiles = False,
    users: dict[str, str] | None = None,
    token: TokenServer | None = None,
    schema1: bool = False,
) -> Iterator[Registry]:
    """Run ``docker-registry serve`` on a free loopback port until the block ends."""
    binary = require_binary(REGISTRY_BIN)
    root = tmp / f"registry-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    tls_files = make_tls(root / "tls") if tls is True else (tls or None)
    for attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        config = registry_config(
            root, port, tls=tls_files, users=users, token=token, schema1=schema1
        )
        config_path = root / "config.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        log_path = root / "registry.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [binary, "serve", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
            )
        registry = Registry(f"127.0.0.1:{port}", root, proc, log_path, tls_files, users or {})
        try:
            _wait_port(port, proc, log_path)
            break
        except RuntimeError:
            registry.stop()
            if attempt == 2:
                raise
    try:
        yield registry
    finally:
        registry.stop()


@contextmanager
def token_server(tmp: Path, users: dict[str, str], **kwargs: Any) -> Iterator[TokenServer]:
    server = TokenServer(tmp / f"token-{uuid.uuid4().hex[:8]}", users, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- pushing test images ---------------------------------------------------------------------


def write_credential_helper(
    bin_dir: Path,
    name: str,
    answers: dict[str, tuple[str, str]],
    *,
    hang: bool = False,
) -> Path:
    """A real docker credential helper, ``bin_dir/docker-credential-NAME`` (POSIX sh), for
    tests to put on PATH. ``get`` answers docker's protocol from ``answers`` (server ->
    (user, secret)); other servers get "credentials not found in native keychain".
    ``store`` succeeds and ``erase`` succeeds for a server in ``answers`` (the table itself
    does not change). ``hang``: it never answers (its pid is in ``bin_dir/NAME.pid``).
    Every call is appended to ``bin_dir/NAME.calls`` as ``ACTION STDIN``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    calls = bin_dir / f"{name}.calls"
    cases = "".join(
        f"  {shlex.quote(server)}) printf '%s' "
        f"{shlex.quote(json.dumps({'ServerURL': server, 'Username': u, 'Secret': p}))} ;;\n"
        for server, (u, p) in answers.items()
    )
    # a hanging helper names its pid first thing: it may be stopped before it reads stdin
    script = f"""#!/bin/sh
{f"echo $$ > {shlex.quote(str(bin_dir / (name + '.pid')))}" if hang else ""}
server=$(cat)
echo "$1 $server" >> {shlex.quote(str(calls))}
{"exec sleep 600" if hang else ""}
case "$1" in
  get) ;;
  store) exit 0 ;;
  erase) ;;
  *) echo "unsupported action $1" >&2; exit 2 ;;
esac
case "$server" in
{cases}  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(script)
    path.chmod(0o755)
    return path


def push_layout(
    layout: Path,
    tag: str,
    registry: Registry,
    dest: str,
    *,
    format: str | None = None,
    all_platforms: bool = False,
    creds: tuple[str, str] | None = None,
) -> None:
    """``skopeo copy oci:LAYOUT:TAG docker://REGISTRY/DEST`` (``format``: "oci", "v2s2")."""
    skopeo = require_binary("skopeo")
    cmd = [skopeo, "copy", "-q", "--dest-tls-verify=false"]
    if format:
        cmd += ["--format", format]
    if all_platforms:
        cmd.append("--all")
    if creds:
        cmd += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    cmd += [f"oci:{layout}:{tag}", f"docker://{registry.host}/{dest}"]
    result = subprocess.run(cmd, capture_output=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.decode(errors='replace')}")


# --- fault-injecting proxy -------------------------------------------------------------------


@attrs.define
class Fault:
    """What to do to requests whose path contains ``path`` (and method matches)."""

    path: str
    kind: str  # "status" | "cut" | "corrupt"
    times: int = 1  # how many matching requests get it; then they pass untouched
    method: str = "GET"
    status: int = 500
    retry_after: str | None = None
    after_bytes: int = 0  # "cut": body bytes sent before closing
    only_full: bool = False  # apply only to requests without a Range header
    body: bytes | None = None  # "status": the body to send (default: a registry error)
    content_type: str = "application/json"


@attrs.frozen
class ProxiedRequest:
    method: str
    path: str
    range: str | None
    status: int
    body_bytes_sent: int
    fault: str | None


class FaultProxy:
    """An HTTP/1.1 proxy on loopback in front of ``upstream`` (host:port), one request per
    connection (it answers ``Connection: close``), threads only."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def body_bytes(self, path_part: str) -> int:
        return sum(r.body_bytes_sent for r in self.requests if path_part in r.path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            socket.create_connection(("127.0.0.1", int(self.host.rsplit(":", 1)[1])), 1).close()
        except OSError:
            pass
        self._thread.join(timeout=5)
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            conn, _ = self._sock.accept()
            if self._stopping.is_set():
                conn.close()
                break
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _take_fault(self, method: str, path: str, has_range: bool) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if (
                    fault.times > 0
                    and fault.method == method
                    and fault.path in path
                    and not (fault.only_full and has_range)
                ):
                    fault.times -= 1
                    return fault
        return None

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            head, body = _read_request(conn)
            if head is None:
                return
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].decode().split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (ln.decode().partition(":") for ln in lines[1:] if ln)
            }
            fault = self._take_fault(method, target, "range" in headers)
            if fault is not None and fault.kind == "status":
                self._answer_status(conn, method, target, headers, fault)
                return
            status, response_head, response_body = self._forward(lines, body)
            sent = response_body
            if fault is not None and fault.kind == "cut":
                sent = response_body[: fault.after_bytes]
            elif fault is not None and fault.kind == "corrupt" and response_body:
                middle = len(response_body) // 2
                flipped = bytes([response_body[middle] ^ 0xFF])
                sent = response_body[:middle] + flipped + response_body[middle + 1 :]
            conn.sendall(response_head + sent)
            self._record(method, target, headers, status, len(sent), fault)
        except OSError:
            pass
        finally:
            conn.close()

    def _answer_status(
        self, conn: socket.socket, method: str, target: str, headers: dict[str, str], fault: Fault
    ) -> None:
        body = fault.body
        if body is None:
            error = {"code": "UNAVAILABLE", "message": "injected fault"}
            body = json.dumps({"errors": [error]}).encode()
        extra = f"Retry-After: {fault.retry_after}\r\n" if fault.retry_after else ""
        conn.sendall(
            f"HTTP/1.1 {fault.status} Injected\r\nContent-Type: {fault.content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode()
            + body
        )
        self._record(method, target, headers, fault.status, len(body), fault)

    def _forward(self, lines: list[bytes], body: bytes) -> tuple[int, bytes, bytes]:
        kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith(b"connection:")]
        request = b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""]) + body
        host, port = self.upstream.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as up:
            up.sendall(request)
            chunks = []
            while chunk := up.recv(256 * 1024):
                chunks.append(chunk)
        raw = b"".join(chunks)
        response_head, _, response_body = raw.partition(b"\r\n\r\n")
        status = int(response_head.split(b" ", 2)[1])
        head_lines = [
            ln for ln in response_head.split(b"\r\n") if not ln.lower().startswith(b"connection:")
        ]
        return status, b"\r\n".join([*head_lines, b"Connection: close", b"", b""]), response_body

    def _record(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        status: int,
        sent: int,
        fault: Fault | None,
    ) -> None:
        with self._lock:
            self.requests.append(
                ProxiedRequest(
                    method,
                    target,
                    headers.get("range"),
                    status,
                    sent,
                    fault.kind if fault else None,
                )
            )


def _read_request(conn: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk or (not data and chunk[:1] == b"\x16"):
            return None, b""  # closed, or a TLS ClientHello: we only speak plain HTTP
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(min(1 << 20, length - len(body)))
        if not chunk:
            break
        body += chunk
    return head, body


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
