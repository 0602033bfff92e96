"""Image references, parsed and normalised the way docker does (distribution/reference).

Grammar (from distribution/reference's ``regexp.go``)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path-component ["/" path-component]*
    domain     := host [":" port]            host: dns labels, or an IPv6 literal in []
    path-comp  := [a-z0-9]+ (([._]|__|[-]+) [a-z0-9]+)*
    tag        := [\\w][\\w.-]{0,127}
    digest     := algorithm ":" hex          (only sha256 is accepted by this engine)

Normalisation (``ParseNormalizedNamed``): a first component without ``.`` or ``:`` that is
not ``localhost`` (and is lowercase) is not a domain, so ``busybox`` is
``docker.io/library/busybox`` and ``user/repo`` is ``docker.io/user/repo``; ``index.docker.io``
becomes ``docker.io``. ``parse_reference`` adds the ``latest`` tag when neither a tag nor a
digest is given. Stdlib + attrs only: engctl imports this on its fast path.
"""

from __future__ import annotations

import re

import attrs

from engine.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN_RE = re.compile(rf"^{_HOST}(?::[0-9]+)?$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
_SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_FULL_ID_RE = re.compile(r"^(?:sha256:)?[a-f0-9]{64}$")
_ID_PREFIX_RE = re.compile(r"^(?:sha256:)?[a-f0-9]{3,64}$")
_ID_PREFIX_MIN = 3


@attrs.frozen
class Reference:
    """A normalised image reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def familiar_name(self) -> str:
        """Docker's short repository name: ``busybox``, ``user/repo``, ``quay.io/x/y``."""
        if self.domain == DEFAULT_DOMAIN:
            return self.path.removeprefix(OFFICIAL_REPO_PREFIX)
        return self.name

    def familiar(self) -> str:
        """Docker's short form for display: ``busybox:latest``."""
        out = self.familiar_name()
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def with_tag(self, tag: str) -> Reference:
        check_tag(tag)
        return attrs.evolve(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        check_digest_ref(digest)
        return attrs.evolve(self, digest=digest)

    def repository(self) -> Reference:
        """The bare repository, without tag or digest."""
        return attrs.evolve(self, tag=None, digest=None)


def check_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise InvalidArgument(
            f"invalid tag {tag!r}: a tag is 1-128 characters of letters, digits, '_', '.' "
            "and '-', and must not start with '.' or '-'"
        )
    return tag


def check_digest_ref(digest: str) -> str:
    if not _DIGEST_RE.match(digest):
        raise InvalidArgument(
            f"invalid digest {digest!r}: expected algorithm:hex, e.g. sha256:<64 hex digits>"
        )
    if digest.startswith("sha256:") and not _SHA256_RE.match(digest):
        raise InvalidArgument(
            f"invalid digest {digest!r}: a sha256 digest has exactly 64 lowercase hex digits"
        )
    if not digest.startswith("sha256:"):
        raise InvalidArgument(
            f"unsupported digest algorithm in {digest!r}: this engine only handles sha256"
        )
    return digest


def parse_reference(s: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise a reference; add ``:latest`` when there is no tag nor digest
    (unless ``default_tag`` is False). Raises ``InvalidArgument`` saying what is wrong."""
    if not isinstance(s, str) or not s:
        raise InvalidArgument("invalid reference format: the image name is empty")
    if _FULL_ID_RE.match(s) and not s.startswith("sha256:"):
        raise InvalidArgument(
            f"invalid repository name ({s}): cannot specify 64-byte hexadecimal strings; "
            "use it as an image ID instead"
        )
    name, tag, digest = _split(s)
    domain, path = _split_domain(name)
    _check_name(s, domain, path)
    if tag is not None:
        check_tag(tag)
    if digest is not None:
        check_digest_ref(digest)
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def parse_repository(s: str) -> Reference:
    """A repository name only (``docker push busybox`` style): no tag added."""
    return parse_reference(s, default_tag=False)


def _split(s: str) -> tuple[str, str | None, str | None]:
    """Split ``name[:tag][@digest]``; the tag's colon is the one after the last slash."""
    rest, digest = s, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not digest:
            raise InvalidArgument(f"invalid reference format {s!r}: empty digest after '@'")
    tag = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not tag:
            raise InvalidArgument(f"invalid reference format {s!r}: empty tag after ':'")
    if not rest:
        raise InvalidArgument(f"invalid reference format {s!r}: the repository name is empty")
    return rest, tag, digest


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, remainder = name.partition("/")
    is_domain = slash and (
        any(c in first for c in ".:") or first == "localhost" or first.lower() != first
    )
    if not is_domain:
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, remainder
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def _check_name(original: str, domain: str, path: str) -> None:
    if not _DOMAIN_RE.match(domain):
        raise InvalidArgument(
            f"invalid reference format {original!r}: {domain!r} is not a valid registry host[:port]"
        )
    for component in path.split("/"):
        if _PATH_COMPONENT_RE.match(component):
            continue
        if component.lower() != component and _PATH_COMPONENT_RE.match(component.lower()):
            raise InvalidArgument(
                f"invalid reference format {original!r}: repository name must be lowercase"
            )
        raise InvalidArgument(
            f"invalid reference format {original!r}: path component {component!r} must be "
            "lowercase letters and digits, separated by '.', '_', '__' or '-'"
        )
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidArgument(
            f"invalid reference format {original!r}: repository name must not be longer than "
            f"{NAME_TOTAL_LENGTH_MAX} characters"
        )


def is_full_image_id(s: str) -> bool:
    """``sha256:<64 hex>`` or 64 bare hex digits."""
    return bool(_FULL_ID_RE.match(s))


def is_image_id_prefix(s: str) -> bool:
    """Whether ``s`` can name an image by ID: full or short (at least 3 hex digits, with or
    without ``sha256:``), as docker allows ``docker rmi 3f57``."""
    return bool(_ID_PREFIX_RE.match(s))


def normalize_image_id(s: str) -> str:
    """An ID or ID prefix with the ``sha256:`` prefix added (``3f57`` -> ``sha256:3f57``)."""
    if not is_image_id_prefix(s):
        raise InvalidArgument(
            f"invalid image ID {s!r}: expected at least {_ID_PREFIX_MIN} hex digits, "
            "optionally prefixed with 'sha256:'"
        )
    return s if s.startswith("sha256:") else "sha256:" + s
