"""The OCI distribution client: manifests and blobs, pulled and pushed over HTTP.

Every byte is checked: manifests against the digest they were asked by (or a computed one),
blobs by ``ContentStore.commit`` (digest and size) before they become visible. Blob
downloads stream into the content store's ingest file, hashed on the way in (and, with a
``tee``, handed to whoever unpacks the layer meanwhile); an interrupted download resumes
from that file's size with ``Range: bytes=N-`` (a ``200`` instead of ``206`` restarts it).
Transient failures (connection errors, 5xx, 429 with ``Retry-After``) are retried with
exponential backoff, a bounded number of times. Two tasks fetching the same blob share one
download.

Cancellation: every method is cancellable by the caller's scope; a cancelled download
leaves its partial file for the next attempt to resume.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import attrs
import trio

from engine.errgroup import unwrap_single_error
from engine.errors import (
    DigestMismatch,
    EngineError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from engine.images.content import ContentStore, IngestWriter, check_digest, sha256_digest
from engine.images.types import (
    ACCEPT_MANIFESTS,
    DOCKER_SCHEMA1_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    SCHEMA1_TYPES,
    detect_media_type,
)
from engine.plugin import BlobTee, CredentialsLookup, RegistryCapability
from engine.plugins.registry import schema1
from engine.plugins.registry.auth import Authenticator, Credentials, repository_scope
from engine.plugins.registry.transport import (
    Endpoint,
    RegistrySettings,
    Response,
    Transport,
    iter_body,
    read_body,
)

if TYPE_CHECKING:
    from engine.reference import Reference

T = TypeVar("T")

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
ACCEPT = ", ".join((*ACCEPT_MANIFESTS, DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1_MANIFEST))
_WRITE_BUFFER = 1024 * 1024  # batch network chunks into fewer thread hops and messages
_CHUNK_THRESHOLD = 32 * 1024 * 1024  # blobs above this are uploaded in PATCH chunks

ProgressFn = Callable[[int, int | None], None]  # (bytes so far, total or None)


@attrs.define
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0
    max_retry_after: float = 30.0  # longer Retry-After answers are capped, not obeyed


async def no_credentials(host: str) -> Credentials | None:
    return None


class DistributionClient:
    """Implements ``engine.plugin.StreamingRegistryClient`` for every host (the
    distribution API).

    ``credentials`` is an async ``host -> Credentials | None``; the plugin wires it to the
    ``engine_registry_credentials`` hook."""

    name = "distribution"
    capabilities = frozenset({RegistryCapability.BLOB_TEE})

    def __init__(
        self,
        settings: RegistrySettings | None = None,
        *,
        credentials: CredentialsLookup = no_credentials,
        max_concurrent_downloads: int = 3,
        max_blob_size: int = 64 * 1024**3,
        retry: RetryPolicy | None = None,
        chunk_threshold: int = _CHUNK_THRESHOLD,
    ) -> None:
        self.transport = Transport(settings or RegistrySettings())
        self.auth = Authenticator(self.transport, credentials)
        self.download_limit = trio.CapacityLimiter(max_concurrent_downloads)
        self.max_blob_size = max_blob_size
        self.retry = retry or RetryPolicy()
        self.chunk_threshold = chunk_threshold
        self.stats: Counter[str] = Counter()
        self._inflight: dict[str, trio.Event] = {}
        # blobs known to live in other repositories of a registry, for cross-repo mounts
        self._known_repos: dict[tuple[str, str], list[str]] = {}

    def handles(self, host: str) -> bool:
        return True

    def reconfigure(self, config: dict[str, Any]) -> None:
        """SIGHUP: insecure registries, mirrors and the download limit of the reloaded
        configuration apply to the next requests (downloads under way keep going)."""
        settings = RegistrySettings.from_config(config)  # raises before anything changes
        downloads = _positive_int(config, "max_concurrent_downloads", 3)
        self.transport.reconfigure(settings)
        self.download_limit.total_tokens = downloads

    async def aclose(self) -> None:
        await self.transport.aclose()

    # --- requests with auth and retries ---------------------------------------------------

    async def _request(
        self,
        endpoint: Endpoint,
        method: str,
        path_or_url: str,
        scopes: tuple[str, ...],
        *,
        headers: dict[str, str] | None = None,
        content: bytes | Callable[[], AsyncIterator[bytes]] | None = None,
        stream: bool = False,
    ) -> Response:
        """One request, answering at most one auth challenge."""
        url = path_or_url if "://" in path_or_url else endpoint.url(path_or_url)
        for attempt in range(2):
            body = content() if callable(content) else content
            auth = self.auth.headers(endpoint, scopes)
            response = await self.transport.send(
                method,
                url,
                verify_tls=endpoint.verify_tls,
                headers={**(headers or {}), **auth},
                content=body,
                stream=stream,
            )
            if response.status_code != 401 or attempt == 1:
                return response
            challenge = response.headers.get("www-authenticate", "")
            await response.aclose()
            sent = auth.get("Authorization")
            if not await self.auth.answer(endpoint, scopes, challenge, sent=sent):
                return response
        raise AssertionError("unreachable")

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``, retrying transient failures with exponential backoff."""
        policy = self.retry
        for attempt in range(1, policy.attempts + 1):
            try:
                return await op()
            except Unavailable as exc:
                if not exc.details.get("transient") or attempt == policy.attempts:
                    if exc.details.get("transient"):
                        raise Unavailable(
                            f"{what} failed after {attempt} attempts: {exc.message}",
                            **exc.details,
                        ) from exc
                    raise
                delay = min(policy.base_delay * 2 ** (attempt - 1), policy.max_delay)
                retry_after = exc.details.get("retry_after")
                if retry_after is not None:
                    delay = min(max(delay, float(retry_after)), policy.max_retry_after)
                self.stats["retries"] += 1
                await trio.sleep(delay)
        raise AssertionError("unreachable")

    async def _on_endpoints(
        self, registry: str, op: Callable[[Endpoint], Awaitable[T]], *, push: bool = False
    ) -> T:
        """Try mirrors first, then the origin; the origin's error is the one reported."""
        endpoints = await self.transport.endpoints(registry, push=push)
        for endpoint in endpoints[:-1]:
            try:
                return await op(endpoint)
            except (NotFound, Unavailable, PermissionDenied, DigestMismatch):
                self.stats["mirror_fallbacks"] += 1
        return await op(endpoints[-1])

    # --- login ----------------------------------------------------------------------------

    async def check_login(self, host: str, username: str, password: str) -> None:
        """Check credentials against ``host``'s ``/v2/`` (Basic or token flow) before
        ``engctl login`` stores them. Raises PermissionDenied when they are refused."""
        endpoint = await self.transport.origin(host)
        creds = Credentials(username, password)

        async def only_these(_host: str) -> Credentials | None:
            return creds

        # a fresh authenticator: cached tokens must not vouch for new credentials
        probe = Authenticator(self.transport, only_these)
        response = await self.transport.send(
            "GET", endpoint.url("/v2/"), verify_tls=endpoint.verify_tls
        )
        await response.aclose()
        if response.status_code == 401:
            challenge = response.headers.get("www-authenticate", "")
            if await probe.answer(endpoint, (), challenge):
                response = await self.transport.send(
                    "GET",
                    endpoint.url("/v2/"),
                    verify_tls=endpoint.verify_tls,
                    headers=probe.headers(endpoint, ()),
                )
                await response.aclose()
        if response.status_code in (401, 403):
            raise PermissionDenied(
                f"{host} refused the credentials of {username!r}: check the user name and password"
            )
        await self._check(response, f"login to {host}")

    def forget_credentials(self, host: str) -> None:
        """Forget cached auth for ``host`` (called after engctl login/logout)."""
        self.auth.forget_registry(host)

    # --- manifests ------------------------------------------------------------------------

    async def get_manifest(self, ref: Reference) -> tuple[bytes, str, str]:
        """Fetch the manifest (or index) named by ``ref``: (bytes, media type, digest).

        With a digest in ``ref`` the bytes are verified against it. Schema1 manifests come
        back as they are (their digest is over the payload without signatures); use
        ``schema1.convert`` to read them. Raises NotFound, PermissionDenied,
        ResourceExhausted (over 4 MiB), DigestMismatch, Unavailable."""
        reference = ref.digest or ref.tag or "latest"
        path = f"/v2/{ref.path}/manifests/{reference}"
        scopes = (repository_scope(ref.path),)

        async def attempt(endpoint: Endpoint) -> tuple[bytes, str, str]:
            response = await self._request(
                endpoint, "GET", path, scopes, headers={"Accept": ACCEPT}, stream=True
            )
            await self._check(response, f"manifest {ref}")
            data = await read_body(response, MAX_MANIFEST_SIZE, f"manifest {ref}")
            return self._verify_manifest(ref, data, response.headers.get("content-type"))

        return await self._on_endpoints(
            ref.domain, lambda ep: self._retrying(f"fetching manifest {ref}", lambda: attempt(ep))
        )

    def _verify_manifest(
        self, ref: Reference, data: bytes, header: str | None
    ) -> tuple[bytes, str, str]:
        try:
            doc = json.loads(data)
        except ValueError:
            raise InvalidArgument(f"registry sent a manifest for {ref} that is not JSON") from None
        if not isinstance(doc, dict):
            raise InvalidArgument(f"registry sent a manifest for {ref} that is not an object")
        media_type = detect_media_type(doc, header)
        if media_type in SCHEMA1_TYPES:
            digest = schema1.manifest_digest(data)
        else:
            digest = sha256_digest(data)
        if ref.digest and digest != ref.digest:
            raise DigestMismatch(
                f"manifest for {ref} does not match its digest: got {digest}",
                expected=ref.digest,
                actual=digest,
            )
        return data, media_type, digest

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """Upload a manifest under ``ref``'s tag (or digest); returns its digest."""
        if len(data) > MAX_MANIFEST_SIZE:
            raise ResourceExhausted(f"manifest of {len(data)} bytes is over the 4 MiB limit")
        digest = sha256_digest(data)
        reference = ref.tag or ref.digest or digest
        endpoint = await self.transport.origin(ref.domain)
        scopes = (repository_scope(ref.path, "pull,push"),)

        async def attempt() -> str:
            response = await self._request(
                endpoint,
                "PUT",
                f"/v2/{ref.path}/manifests/{reference}",
                scopes,
                headers={"Content-Type": media_type},
                content=data,
            )
            await self._check(response, f"manifest upload to {ref}")
            returned = response.headers.get("docker-content-digest")
            if returned and returned != digest:
                raise DigestMismatch(
                    f"registry stored manifest of {ref} as {returned}, expected {digest}"
                )
            return digest

        return await self._retrying(f"pushing manifest {ref}", attempt)

    # --- blobs: download ------------------------------------------------------------------

    async def fetch_blob(
        self,
        ref: Reference,
        digest: str,
        size: int | None,
        content: ContentStore,
        *,
        progress: ProgressFn | None = None,
        tee: BlobTee | None = None,
        durable: bool = True,
    ) -> Path:
        """Download a blob into ``content`` (verified) and return its path there.

        A blob already in the store is not fetched (and ``tee`` gets nothing). Concurrent
        calls for one digest share a single download. ``tee`` sees the bytes as they arrive;
        ``durable=False`` skips the fsync of the blob (see ``ContentStore.commit``).
        Raises DigestMismatch (no partial left), ResourceExhausted (over the blob size cap),
        NotFound, PermissionDenied, Unavailable."""
        check_digest(digest)
        if size is not None and size > self.max_blob_size:
            raise ResourceExhausted(
                f"blob {digest} is {size} bytes, over the {self.max_blob_size}-byte cap "
                "(max_blob_size)"
            )
        while True:
            if await trio.to_thread.run_sync(content.has, digest):
                return content.path(digest)
            event = self._inflight.get(digest)
            if event is None:
                break
            await event.wait()  # another task's download; then check the store again
        event = self._inflight[digest] = trio.Event()
        try:
            async with self.download_limit:
                blob = _Download(ref, digest, size, content, progress, tee, durable)
                await self._on_endpoints(ref.domain, lambda ep: self._download_verified(ep, blob))
        finally:
            del self._inflight[digest]
            event.set()
        self._remember_repo(ref, digest)
        return content.path(digest)

    async def _download_verified(self, endpoint: Endpoint, blob: _Download) -> None:
        partial = blob.content.ingest_path(blob.digest)
        resumed = await trio.to_thread.run_sync(_partial_size, partial, blob.size) > 0
        try:
            await self._download_and_commit(endpoint, blob)
        except DigestMismatch:
            if not resumed:
                raise
            # The bytes kept from an earlier attempt were wrong (commit deleted them): one
            # fresh download decides whether the registry or the old partial was at fault.
            self.stats["restarts_after_bad_partial"] += 1
            await self._download_and_commit(endpoint, blob)
        self.stats["blobs_downloaded"] += 1

    async def _download_and_commit(self, endpoint: Endpoint, blob: _Download) -> None:
        partial = blob.content.ingest_path(blob.digest)
        hashed = await self._retrying(
            f"downloading blob {blob.digest} of {blob.ref.name}",
            lambda: self._download_once(endpoint, blob, partial),
        )
        await trio.to_thread.run_sync(
            functools.partial(
                blob.content.commit,
                partial,
                blob.digest,
                blob.size,
                hashed=hashed,
                durable=blob.durable,
            )
        )

    async def _download_once(self, endpoint: Endpoint, blob: _Download, partial: Path) -> str | None:
        """One attempt; returns the digest of the whole ingest file when it hashed it."""
        offset = await trio.to_thread.run_sync(_partial_size, partial, blob.size)
        if blob.size is not None and offset == blob.size:
            return None  # complete already; commit verifies it
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        if offset:
            self.stats["resumes"] += 1
        ref, digest = blob.ref, blob.digest
        response = await self._request(
            endpoint,
            "GET",
            f"/v2/{ref.path}/blobs/{digest}",
            (repository_scope(ref.path),),
            headers=headers,
            stream=True,
        )
        try:
            if response.status_code == 416:  # our partial is past the end: start over
                await trio.to_thread.run_sync(partial.unlink, True)
                raise Unavailable(f"blob {digest}: range not satisfiable", transient=True)
            await self._check(response, f"blob {digest} of {ref.name}")
            offset = _resume_offset(response, offset)
            return await self._write_stream(response, partial, offset, blob)
        finally:
            await response.aclose()

    async def _write_stream(
        self, response: Response, partial: Path, offset: int, blob: _Download
    ) -> str:
        """Append the body to ``partial`` (kept up to ``offset``) and hand it to the tee;
        returns the digest of the whole file."""
        limit = blob.size if blob.size is not None else self.max_blob_size
        # opening hashes the kept bytes of a resumed download
        writer = await trio.to_thread.run_sync(IngestWriter, partial, offset)
        try:
            if blob.tee is not None:
                await blob.tee.begin(partial, offset)
            written, buffered_size = offset, 0
            buffered: list[bytes] = []
            # the retry logic looks at Unavailable, not at a group
            with unwrap_single_error():
                async with trio.open_nursery() as nursery:
                    flusher = _Flusher(writer, blob.tee, nursery)
                    try:
                        async for chunk in iter_body(response):
                            written += len(chunk)
                            self.stats["bytes_downloaded"] += len(chunk)
                            if written > limit:
                                buffered.clear()
                                await flusher.wait()
                                await trio.to_thread.run_sync(partial.unlink, True)
                                raise _oversized(blob.digest, blob.size, limit)
                            buffered.append(chunk)
                            buffered_size += len(chunk)
                            if buffered_size >= _WRITE_BUFFER:
                                await flusher.flush(buffered)
                                buffered, buffered_size = [], 0
                                if blob.progress:
                                    blob.progress(written, blob.size)
                    finally:
                        # keep what arrived before a cut, so the next attempt resumes after
                        # it (the tee does not get it: the next attempt's begin() tells it
                        # where to resume)
                        with trio.CancelScope(shield=True):
                            await flusher.wait()
                            await trio.to_thread.run_sync(writer.write, buffered)
            if blob.progress:
                blob.progress(written, blob.size)
            return writer.digest()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(writer.close)

    # --- blobs: upload --------------------------------------------------------------------

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        endpoint = await self.transport.origin(ref.domain)
        return await self._blob_exists(endpoint, ref, digest, (repository_scope(ref.path),))

    async def _blob_exists(
        self, endpoint: Endpoint, ref: Reference, digest: str, scopes: tuple[str, ...]
    ) -> bool:
        async def attempt() -> bool:
            response = await self._request(
                endpoint, "HEAD", f"/v2/{ref.path}/blobs/{digest}", scopes
            )
            if response.status_code == 404:
                return False
            await self._check(response, f"blob {digest} in {ref.name}")
            return True

        return await self._retrying(f"checking blob {digest}", attempt)

    async def push_blob(
        self,
        ref: Reference,
        digest: str,
        size: int,
        content: ContentStore,
        *,
        mount_from: list[str] | None = None,
    ) -> str:
        """Make the blob exist in ``ref``'s repository: "exists", "mounted" or "uploaded".

        Tries a cross-repository mount from ``mount_from`` (or repositories this client saw
        the blob in) before uploading: monolithic PUT for small blobs, PATCH chunks for
        large ones."""
        endpoint = await self.transport.origin(ref.domain)
        scopes = (repository_scope(ref.path, "pull,push"),)
        if await self._blob_exists(endpoint, ref, digest, scopes):
            self.stats["blobs_existing"] += 1
            return "exists"
        known = mount_from or self._known_repos.get((ref.domain, digest), [])
        sources = [r for r in known if r != ref.path]
        session: list[str | None] = [None]
        if sources:
            mounted, session[0] = await self._try_mount(endpoint, ref, digest, sources[0])
            if mounted:
                self.stats["blobs_mounted"] += 1
                self._remember_repo(ref, digest)
                return "mounted"

        async def attempt() -> None:
            # a refused mount opened an upload session: use it once, then start afresh
            location, session[0] = session[0], None
            await self._upload(endpoint, ref, digest, size, content, scopes, location)

        await self._retrying(f"uploading blob {digest} to {ref.name}", attempt)
        self.stats["blobs_uploaded"] += 1
        self._remember_repo(ref, digest)
        return "uploaded"

    async def _try_mount(
        self, endpoint: Endpoint, ref: Reference, digest: str, source: str
    ) -> tuple[bool, str | None]:
        scopes = (repository_scope(ref.path, "pull,push"), repository_scope(source))
        path = f"/v2/{ref.path}/blobs/uploads/?mount={digest}&from={source}"
        response = await self._request(endpoint, "POST", path, scopes)
        if response.status_code == 201:
            return True, None
        if response.status_code == 202:
            return False, response.headers.get("location")
        return False, None

    async def _upload(
        self,
        endpoint: Endpoint,
        ref: Reference,
        digest: str,
        size: int,
        content: ContentStore,
        scopes: tuple[str, ...],
        location: str | None,
    ) -> None:
        if location is None:
            response = await self._request(
                endpoint, "POST", f"/v2/{ref.path}/blobs/uploads/", scopes
            )
            await self._check(response, f"starting an upload to {ref.name}")
            location = _absolute(endpoint, response.headers.get("location", ""))
        else:
            location = _absolute(endpoint, location)
        blob = content.path(digest)
        if size <= self.chunk_threshold:
            data = await trio.to_thread.run_sync(blob.read_bytes)
            response = await self._request(
                endpoint,
                "PUT",
                _with_query(location, f"digest={digest}"),
                scopes,
                headers={"Content-Type": "application/octet-stream"},
                content=data,
            )
            await self._check(response, f"uploading blob {digest}")
            return
        offset = 0
        async for chunk in _read_chunks(blob, self.chunk_threshold):
            end = offset + len(chunk) - 1
            response = await self._request(
                endpoint,
                "PATCH",
                location,
                scopes,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{end}",
                },
                content=chunk,
            )
            await self._check(response, f"uploading a chunk of blob {digest}")
            location = _absolute(endpoint, response.headers.get("location", location))
            offset = end + 1
        response = await self._request(
            endpoint, "PUT", _with_query(location, f"digest={digest}"), scopes, content=b""
        )
        await self._check(response, f"completing the upload of blob {digest}")

    def _remember_repo(self, ref: Reference, digest: str) -> None:
        repos = self._known_repos.setdefault((ref.domain, digest), [])
        if ref.path not in repos:
            repos.append(ref.path)

    # --- errors ---------------------------------------------------------------------------

    async def _check(self, response: Response, what: str) -> None:
        """Raise the engine error for a failed response (reading its error body)."""
        status = response.status_code
        if status < 400:
            return
        try:
            body = await read_body(response, 64 * 1024, "error body")
        except EngineError:
            body = b""
        detail = _registry_message(body)
        host = response.request.url.netloc.decode()
        if status == 404:
            raise NotFound(f"{what} not found on {host}{detail}")
        if status in (401, 403):
            raise PermissionDenied(
                f"{what}: access denied by {host} (HTTP {status}){detail}; log in with "
                f"engctl login {host} or check the repository name"
            )
        if status == 429 or status >= 500:
            retry_after = _retry_after(response.headers.get("retry-after"))
            raise Unavailable(
                f"{what}: registry {host} answered HTTP {status}{detail}",
                transient=True,
                retry_after=retry_after,
            )
        raise InvalidArgument(
            f"{what}: registry {host} refused the request (HTTP {status}){detail}"
        )


# --- helpers ---------------------------------------------------------------------------------


class _Flusher:
    """Writes batches to the ingest file in a worker thread while the next batch arrives
    (one write in flight, so they stay in order), and hands each batch to the tee. A batch
    reaches the tee only once every byte before it is in the file: an unpack that skipped
    bytes reads them from there."""

    def __init__(
        self, writer: IngestWriter, tee: BlobTee | None, nursery: trio.Nursery
    ) -> None:
        self._writer = writer
        self._tee = tee
        self._nursery = nursery
        self._in_flight: trio.Event | None = None

    async def flush(self, chunks: list[bytes]) -> None:
        await self.wait()
        done = self._in_flight = trio.Event()
        self._nursery.start_soon(self._write, chunks, done)
        if self._tee is not None:
            await self._tee.data(chunks)

    async def _write(self, chunks: list[bytes], done: trio.Event) -> None:
        try:
            await trio.to_thread.run_sync(self._writer.write, chunks)
        finally:
            done.set()

    async def wait(self) -> None:
        """Until the write in flight (if any) is done."""
        if self._in_flight is not None:
            await self._in_flight.wait()


@attrs.frozen
class _Download:
    """One blob download's parameters, passed along the retry layers."""

    ref: Reference
    digest: str
    size: int | None
    content: ContentStore
    progress: ProgressFn | None
    tee: BlobTee | None
    durable: bool


def _positive_int(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"config key {key!r} must be a positive integer, got {value!r}")
    return value


def _oversized(digest: str, size: int | None, limit: int) -> EngineError:
    if size is not None:
        return DigestMismatch(
            f"blob {digest}: registry sent more than the {size} bytes declared", digest=digest
        )
    return ResourceExhausted(f"blob {digest} exceeds the {limit}-byte cap (max_blob_size)")


def _partial_size(partial: Path, size: int | None) -> int:
    """Where to resume: the partial file's size, or 0 when it cannot be a prefix."""
    try:
        have = partial.stat().st_size
    except FileNotFoundError:
        return 0
    if size is not None and have > size:
        partial.unlink()
        return 0
    return have


_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _resume_offset(response: Response, asked: int) -> int:
    """206 resumes at ``asked`` (checked); 200 starts over from 0."""
    if response.status_code != 206:
        return 0
    match = _CONTENT_RANGE_RE.match(response.headers.get("content-range", ""))
    if match is None or int(match.group(1)) != asked:
        raise Unavailable(
            f"registry resumed at the wrong offset ({response.headers.get('content-range')!r}, "
            f"asked {asked})",
            transient=True,
        )
    return asked


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _registry_message(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        parts = [f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        return ""
    return f" ({'; '.join(parts)})" if parts else ""


def _absolute(endpoint: Endpoint, location: str) -> str:
    if not location:
        raise Unavailable("registry started an upload without a Location header")
    if "://" in location:
        return location
    base = urlsplit(endpoint.base_url)
    return f"{base.scheme}://{base.netloc}{location}"


def _with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


async def _read_chunks(path: Path, chunk_size: int) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as f:
        while chunk := await f.read(chunk_size):
            yield chunk


@asynccontextmanager
async def open_client(**kwargs: Any) -> AsyncIterator[DistributionClient]:
    """A client whose connections are closed on exit."""
    client = DistributionClient(**kwargs)
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await client.aclose()
