"""Make libtrust-style signed Docker schema1 manifests (what old registries served)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _key_id(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def sign_schema1(manifest: dict[str, Any]) -> bytes:
    """The manifest as a signed "pretty JWS", the way docker 1.x pushed it."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    numbers = public.public_numbers()
    payload = json.dumps(manifest, indent=3).encode()
    tail_at = payload.rindex(b"}")
    while payload[tail_at - 1 : tail_at] in (b"\n", b" "):
        tail_at -= 1
    format_length, format_tail = tail_at, payload[tail_at:]
    protected = _b64url(
        json.dumps(
            {
                "formatLength": format_length,
                "formatTail": _b64url(format_tail),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        ).encode()
    )
    signing_input = f"{protected}.{_b64url(payload)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    signature = {
        "header": {
            "jwk": {
                "crv": "P-256",
                "kid": _key_id(public),
                "kty": "EC",
                "x": _b64url(numbers.x.to_bytes(32, "big")),
                "y": _b64url(numbers.y.to_bytes(32, "big")),
            },
            "alg": "ES256",
        },
        "signature": _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
        "protected": protected,
    }
    signatures = json.dumps([signature], indent=3).replace("\n", "\n   ").encode()
    return payload[:format_length] + b',\n   "signatures": ' + signatures + format_tail
