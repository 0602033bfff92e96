"""Registry authentication: anonymous, Basic, and the bearer-token challenge flow.

The flow (distribution's token spec): a request answered ``401`` with
``WWW-Authenticate: Bearer realm="…",service="…",scope="…"`` makes us GET the realm with
``service`` and ``scope`` (and Basic credentials when we have some); the answer's ``token``
(or ``access_token``) is sent as ``Authorization: Bearer …`` and cached per (registry, scope)
until it expires. A ``Basic`` challenge makes us send the stored credentials. Without
credentials we stay anonymous, which public repositories allow.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote, urlsplit

import attrs
import trio

from engine.errors import PermissionDenied, Unavailable
from engine.plugin import CredentialsLookup, RegistryCredentials
from engine.plugins.registry.transport import Endpoint, Transport, read_body

Credentials = RegistryCredentials  # the name this package has always used

_SCHEME_RE = re.compile(r"(?:^|,)\s*([A-Za-z][A-Za-z0-9_-]*)(?=\s+[a-zA-Z_]+\s*=|\s*(?:,|$))")
_PARAM_RE = re.compile(r'([a-zA-Z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
_TOKEN_MARGIN = 10.0  # renew this many seconds before expiry
_DEFAULT_TOKEN_LIFETIME = 60.0  # the spec's default when expires_in is missing


@attrs.frozen
class Challenge:
    scheme: str  # lower case: "bearer" or "basic"
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate``: one or more challenges, with quoted or bare params."""
    starts = list(_SCHEME_RE.finditer(header))
    challenges: list[Challenge] = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(header)
        text = header[match.end() : end]
        params = {
            m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
            for m in _PARAM_RE.finditer(text)
        }
        challenges.append(Challenge(match.group(1).lower(), params))
    return challenges


def repository_scope(repository: str, actions: str = "pull") -> str:
    return f"repository:{repository}:{actions}"


@attrs.define
class _Token:
    value: str
    expires: float  # trio clock


class Authenticator:
    """Holds tokens per (registry, scope) and answers challenges."""

    def __init__(self, transport: Transport, credentials: CredentialsLookup) -> None:
        self.transport = transport
        self.credentials = credentials
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._basic: dict[str, str] = {}  # registry -> Basic header, once asked for it
        self.token_requests = 0  # statistics for tests and `info`

    def headers(self, endpoint: Endpoint, scopes: tuple[str, ...]) -> dict[str, str]:
        """The Authorization header we already know for this request, if any."""
        token = self._tokens.get((endpoint.base_url, " ".join(scopes)))
        if token is not None and token.expires > trio.current_time():
            return {"Authorization": f"Bearer {token.value}"}
        basic = self._basic.get(endpoint.base_url)
        return {"Authorization": basic} if basic else {}

    async def answer(
        self,
        endpoint: Endpoint,
        scopes: tuple[str, ...],
        header: str,
        *,
        sent: str | None = None,
    ) -> bool:
        """Handle a 401's challenge; True when retrying the request makes sense.

        ``sent`` is the Authorization header the refused request carried. Only that says
        whether the credentials were refused: requests run concurrently, and another task
        may have answered the same challenge (and cached the Basic header) while this
        request was on its way without it."""
        challenges = {c.scheme: c for c in parse_challenges(header)}
        creds = await self.credentials(endpoint.host)
        if "bearer" in challenges:
            await self._fetch_token(endpoint, scopes, challenges["bearer"], creds)
            return True
        if "basic" in challenges and creds is not None:
            if sent == creds.basic_header():
                return False  # these very credentials were refused
            self._basic[endpoint.base_url] = creds.basic_header()
            return True
        return False

    async def _fetch_token(
        self,
        endpoint: Endpoint,
        scopes: tuple[str, ...],
        challenge: Challenge,
        creds: Credentials | None,
    ) -> None:
        realm = challenge.params.get("realm")
        if not realm:
            raise Unavailable(
                f"registry {endpoint.host} sent a Bearer challenge without a realm; "
                "it is misconfigured"
            )
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        wanted = scopes or tuple(filter(None, [challenge.params.get("scope", "")]))
        params.extend(("scope", s) for s in wanted)
        query = "&".join(f"{k}={_quote(v)}" for k, v in params)
        url = realm + ("&" if "?" in realm else "?") + query if query else realm
        headers = {"Authorization": creds.basic_header()} if creds else {}
        self.token_requests += 1
        response = await self.transport.send("GET", url, headers=headers)
        body = await read_body(response, 1024 * 1024, f"token from {realm}")
        if response.status_code in (401, 403):
            who = f"user {creds.username!r}" if creds else "anonymous access"
            raise PermissionDenied(
                f"the token server of {endpoint.host} refused {who} "
                f"(HTTP {response.status_code}); check the credentials with engctl login "
                f"{endpoint.host}"
            )
        if response.status_code >= 500:
            raise Unavailable(
                f"token server {realm} failed with HTTP {response.status_code}", transient=True
            )
        if response.status_code != 200:
            raise Unavailable(f"token server {realm} answered HTTP {response.status_code}")
        self._store_token(endpoint, scopes, body, realm)

    def _store_token(
        self, endpoint: Endpoint, scopes: tuple[str, ...], body: bytes, realm: str
    ) -> None:
        try:
            doc = json.loads(body)
            value = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            value, lifetime = None, 0.0
        if not value:
            raise Unavailable(f"token server {realm} returned no token; it is misconfigured")
        expires = trio.current_time() + max(lifetime - _TOKEN_MARGIN, 1.0)
        self._tokens[(endpoint.base_url, " ".join(scopes))] = _Token(value, expires)

    def forget(self, endpoint: Endpoint, scopes: tuple[str, ...]) -> None:
        self._tokens.pop((endpoint.base_url, " ".join(scopes)), None)

    def forget_registry(self, host: str) -> None:
        """Drop every token and Basic header cached for ``host`` (HOST[:PORT]): after a
        login or logout the stored credentials changed, and a cached header must not keep
        an old login alive."""
        for base_url in [b for b in self._basic if urlsplit(b).netloc == host]:
            del self._basic[base_url]
        for key in [k for k in self._tokens if urlsplit(k[0]).netloc == host]:
            del self._tokens[key]


def _quote(value: str) -> str:
    return quote(value, safe=":/")
