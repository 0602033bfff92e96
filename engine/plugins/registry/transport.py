"""HTTP to registries: the only module of the engine that imports httpx.

One ``httpx.AsyncClient`` per (scheme, host, TLS settings), built from the registry settings:

- ``insecure-registries``: a list of ``HOST[:PORT]`` names or CIDRs (``10.0.0.0/8``). For
  those, TLS is still tried first but not verified, and plain HTTP is allowed (chosen by a
  one-time probe of ``/v2/``). Loopback is NOT insecure by default (dockerd treats
  127.0.0.0/8 as insecure; we prefer to make it explicit). CIDRs match IP-literal hosts only;
  names are not resolved.
- every other registry: HTTPS with verified certificates. Extra CAs come from
  ``<certs_dir>/HOST[:PORT]/*.crt`` (docker's ``certs.d``) and a client certificate from
  ``client.cert`` + ``client.key`` in the same directory.
- ``registry-mirrors``: dockerd's form, a list of mirror URLs used for docker.io, or a dict
  ``registry host -> [mirror URLs]`` for any registry. Pulls try the mirrors first, in order,
  and fall back to the origin; pushes always go to the origin.

httpx runs under trio through anyio. Each I/O step has a timeout (connect, read, write,
pool); the caller's cancel scope bounds the whole operation. httpx exceptions never leave
this module: they become ``Unavailable`` (``details["transient"]`` says whether retrying may
help).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
import trio

from engine.errors import InvalidArgument, ResourceExhausted, Unavailable
from engine.lazy import LazyModule

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_CONFIG_DIR = Path("/etc/engine")

# httpcore reads HTTP/1.1 responses 64 KiB at a time; layer blobs are hundreds of MiB, and
# every read costs a trip through httpcore and h11 on the event loop. 1 MiB reads cut that
# work by 16 (a read returns what the socket has, so small responses are not delayed).
_READ_SIZE = 1024 * 1024


def _read_bigger_chunks() -> None:
    import httpcore

    if getattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", 0) < _READ_SIZE:
        httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = _READ_SIZE


def _take_whole_buffer_when_possible() -> bool:
    """h11's ``ReceiveBuffer.maybe_extract_at_most`` copies the buffer twice to hand body
    bytes on (once only to test for emptiness, once to extract), holding the GIL: for a
    layer pull that is two extra copies of every byte on the event loop, about a tenth of
    the pull's time. When the caller takes everything buffered (the usual case for a body
    read 1 MiB at a time), hand over the buffer itself instead; the semantics are the
    same. Applied only to the h11 internals this was written against; returns whether it
    was applied."""
    import h11._receivebuffer

    buffer_class: Any = getattr(h11._receivebuffer, "ReceiveBuffer", None)
    try:
        probe = buffer_class()
        original = buffer_class.maybe_extract_at_most
    except (TypeError, AttributeError):
        return False
    internals = ("_data", "_next_line_search", "_multiple_lines_search", "_extract")
    if not isinstance(probe._data, bytearray) or not all(hasattr(probe, n) for n in internals):
        return False
    if getattr(original, "_engine_fast_path", False):
        return True

    def maybe_extract_at_most(self: Any, count: int) -> bytearray | None:
        if not self._data or count < len(self._data):
            return original(self, count)  # type: ignore[no-any-return]
        out, self._data = self._data, bytearray()
        self._next_line_search = 0
        self._multiple_lines_search = 0
        return out  # type: ignore[no-any-return]

    maybe_extract_at_most._engine_fast_path = True  # type: ignore[attr-defined]
    maybe_extract_at_most._engine_original = original  # type: ignore[attr-defined]
    buffer_class.maybe_extract_at_most = maybe_extract_at_most
    return True


def _tune_httpx(_httpx: ModuleType) -> None:
    global H11_FAST_BODY
    _read_bigger_chunks()
    H11_FAST_BODY = _take_whole_buffer_when_possible()


H11_FAST_BODY = False  # whether h11's body fast path is on (once httpx is imported)

# httpx is imported (and tuned) when the first registry client is made: an idle daemon
# that never pulls does not carry it.
if TYPE_CHECKING:
    import httpx

    Response = httpx.Response
else:
    httpx = LazyModule("httpx", on_import=_tune_httpx)
    Response = Any  # the type, for other modules' annotations; see TYPE_CHECKING above


def import_httpx() -> None:
    """Import (and tune) httpx now rather than at the first registry request."""
    if not TYPE_CHECKING:
        httpx.load()


@attrs.frozen
class RegistrySettings:
    """The registry part of the engine's configuration, normalised."""

    insecure: tuple[str, ...] = ()
    mirrors: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    certs_dir: Path = DEFAULT_CONFIG_DIR / "certs.d"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RegistrySettings:
        config_dir = Path(config.get("config_dir") or DEFAULT_CONFIG_DIR)
        return cls(
            insecure=tuple(_string_list(config.get("insecure-registries"), "insecure-registries")),
            mirrors=_parse_mirrors(config.get("registry-mirrors")),
            certs_dir=Path(config.get("certs_dir") or config_dir / "certs.d"),
            connect_timeout=float(config.get("registry_connect_timeout", 10.0)),
            read_timeout=float(config.get("registry_read_timeout", 60.0)),
        )

    def is_insecure(self, host: str) -> bool:
        """True when ``host`` (``HOST[:PORT]``) is listed by name or falls in a listed CIDR."""
        bare = _strip_port(host)
        for entry in self.insecure:
            if entry in (host, bare):
                return True
            if "/" in entry and _ip_in_cidr(bare, entry):
                return True
        return False


def _string_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"config key {key!r} must be a list of strings, got {value!r}")
    return list(value)


def _parse_mirrors(value: Any) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if isinstance(value, list):  # dockerd's form: mirrors of docker.io
        value = {DOCKER_HUB: value}
    if not isinstance(value, dict):
        raise InvalidArgument(
            "config key 'registry-mirrors' must be a list of URLs (mirrors of docker.io) "
            f"or a map registry -> [URLs], got {value!r}"
        )
    mirrors: dict[str, tuple[str, ...]] = {}
    for host, urls in value.items():
        checked = _string_list(urls, f"registry-mirrors.{host}")
        for url in checked:
            if urlsplit(url).scheme not in ("http", "https"):
                raise InvalidArgument(f"registry mirror {url!r} must be an http:// or https:// URL")
        mirrors[host] = tuple(u.rstrip("/") for u in checked)
    return mirrors


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        return host[1 : host.index("]")]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _ip_in_cidr(host: str, cidr: str) -> bool:
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


@attrs.frozen
class Endpoint:
    """Where requests for one registry go: the origin or one of its mirrors."""

    host: str  # the registry as named in references (for credentials and certs.d)
    base_url: str  # scheme://host[:port][/prefix], no trailing slash
    verify_tls: bool
    mirror: bool = False

    def url(self, path: str) -> str:
        return self.base_url + path


class Transport:
    """HTTP clients per registry, with the TLS and scheme rules above.

    Resource handling: clients are created lazily and closed by ``aclose``."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self._clients: dict[tuple[str, str, bool], httpx.AsyncClient] = {}
        self._schemes: dict[str, str] = {}  # insecure host -> scheme found by probing
        self._probe_lock = trio.Lock()

    def reconfigure(self, settings: RegistrySettings) -> None:
        """Use ``settings`` from the next request on (a SIGHUP reload). Open clients stay:
        they are keyed by scheme, host and verification, which settings only select."""
        self.settings = settings
        self._schemes.clear()  # a host listed or unlisted as insecure is probed afresh

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    # --- endpoints ------------------------------------------------------------------------

    async def endpoints(self, registry: str, *, push: bool = False) -> list[Endpoint]:
        """Mirrors first (pulls only), then the origin."""
        found: list[Endpoint] = []
        if not push:
            for url in self.settings.mirrors.get(registry, ()):
                mirror_host = urlsplit(url).netloc
                found.append(
                    Endpoint(registry, url, not self.settings.is_insecure(mirror_host), True)
                )
        found.append(await self.origin(registry))
        return found

    async def origin(self, registry: str) -> Endpoint:
        api_host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        if not self.settings.is_insecure(api_host):
            return Endpoint(registry, f"https://{api_host}", True)
        scheme = await self._probe_scheme(api_host)
        return Endpoint(registry, f"{scheme}://{api_host}", False)

    async def _probe_scheme(self, api_host: str) -> str:
        """For an insecure registry: HTTPS (unverified) if it answers TLS, else plain HTTP."""
        async with self._probe_lock:
            if api_host in self._schemes:
                return self._schemes[api_host]
            client = self._client("https", api_host, verify=False)
            try:
                response = await client.get(f"https://{api_host}/v2/")
                await response.aclose()
                scheme = "https"
            except httpx.TransportError:
                scheme = "http"
            self._schemes[api_host] = scheme
            return scheme

    # --- clients --------------------------------------------------------------------------

    def _client(self, scheme: str, netloc: str, *, verify: bool) -> httpx.AsyncClient:
        key = (scheme, netloc, verify)
        client = self._clients.get(key)
        if client is None:
            s = self.settings
            client = httpx.AsyncClient(
                verify=self._ssl_context(netloc) if verify else False,
                timeout=httpx.Timeout(s.read_timeout, connect=s.connect_timeout),
                follow_redirects=True,
                limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
                headers={"User-Agent": "engine/0.1 (+distribution client)"},
            )
            self._clients[key] = client
        return client

    def _ssl_context(self, netloc: str) -> ssl.SSLContext:
        """System CAs plus ``certs.d/HOST[:PORT]/*.crt``; client cert/key if present."""
        ctx = ssl.create_default_context()
        cert_dir = self.settings.certs_dir / netloc
        if cert_dir.is_dir():
            for ca in sorted(cert_dir.glob("*.crt")):
                ctx.load_verify_locations(cafile=str(ca))
            cert, key = cert_dir / "client.cert", cert_dir / "client.key"
            if cert.exists() and key.exists():
                ctx.load_cert_chain(str(cert), str(key))
            elif cert.exists() or key.exists():
                raise InvalidArgument(
                    f"{cert_dir} holds only one of client.cert and client.key; "
                    "a client certificate needs both"
                )
        return ctx

    def _client_for_url(self, url: str, verify: bool) -> httpx.AsyncClient:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidArgument(f"unsupported URL {url!r}: expected http:// or https://")
        return self._client(parts.scheme, parts.netloc, verify=verify and parts.scheme == "https")

    # --- requests -------------------------------------------------------------------------

    async def send(
        self,
        method: str,
        url: str,
        *,
        verify_tls: bool = True,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        stream: bool = False,
    ) -> Response:
        """Send one request. With ``stream=True`` the caller reads the body with
        ``iter_body`` / ``read_body`` and must ``await response.aclose()``."""
        verify = verify_tls and not self.settings.is_insecure(urlsplit(url).netloc)
        client = self._client_for_url(url, verify)
        request = client.build_request(method, url, headers=dict(headers or {}), content=content)
        try:
            return await client.send(request, stream=stream)
        except httpx.TransportError as exc:
            raise _translate(exc, url) from exc


async def iter_body(response: Response) -> AsyncIterator[bytes]:
    """The body of a streamed response as it arrives (no re-chunking: httpx's chunker
    would hold back bytes that a cut connection then loses), transport errors translated."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        raise _translate(exc, str(response.request.url)) from exc
    except httpx.StreamError as exc:
        raise Unavailable(f"reading {response.request.url} failed: {exc}", transient=True) from exc


async def read_body(response: Response, limit: int, what: str) -> bytes:
    """Read a (streamed or not) body, refusing more than ``limit`` bytes."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await response.aclose()
        raise ResourceExhausted(
            f"{what} is {int(declared)} bytes, over the {limit}-byte limit; "
            "refusing it (a registry should not serve this)"
        )
    if response.is_stream_consumed:
        return response.content
    chunks: list[bytes] = []
    total = 0
    async for chunk in iter_body(response):
        total += len(chunk)
        if total > limit:
            await response.aclose()
            raise ResourceExhausted(f"{what} exceeds the {limit}-byte limit; refusing it")
        chunks.append(chunk)
    await response.aclose()
    return b"".join(chunks)


def _translate(exc: httpx.TransportError, url: str) -> Unavailable:
    ssl_error = _find_cause(exc, ssl.SSLError)
    netloc = urlsplit(url).netloc
    if isinstance(ssl_error, ssl.SSLCertVerificationError):
        return Unavailable(
            f"TLS certificate of {netloc} is not trusted ({ssl_error.verify_message}): put "
            f"its CA in certs.d/{netloc}/ca.crt, or list {netloc} in insecure-registries",
            transient=False,
            tls=True,
        )
    if ssl_error is not None:
        return Unavailable(
            f"TLS handshake with {netloc} failed ({ssl_error}); if it is a plain-HTTP "
            f"registry, list {netloc} in insecure-registries",
            transient=False,
            tls=True,
        )
    kind = type(exc).__name__
    return Unavailable(f"request to {url} failed: {kind}: {exc}", transient=True)


def _find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
