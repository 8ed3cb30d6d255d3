"""HMAC-signed, expiring acknowledgement tokens for the link in a page.

A token is ``<payload>.<signature>``, both base64url without padding: the
payload is compact JSON ``{"k": dedup key, "n": thread number, "p": person,
"e": expiry epoch s}``, the signature the first 16 bytes of HMAC-SHA256 of the payload text with
the pager's secret.  Verification is constant-time and checks expiry
against an injected ``now``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

MAX_TOKEN_LEN = 1024
MAC_BYTES = 16


class TokenError(ValueError):
    """The token is malformed, forged or expired; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class AckClaim:
    key: str
    n: int
    person: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, payload: str) -> str:
    # HMAC-SHA256 truncated to 128 bits keeps the link short enough for SMS
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest()[:MAC_BYTES])


def make_token(secret: bytes, key: str, n: int, person: str, expires: int) -> str:
    """Sign a claim that ``person`` may acknowledge thread ``n`` of ``key``
    until ``expires`` (epoch seconds)."""
    if len(secret) < 16:
        raise ValueError("ack secret must be at least 16 bytes")
    body = json.dumps({"k": key, "n": n, "p": person, "e": expires}, separators=(",", ":"))
    payload = _b64(body.encode("utf-8"))
    return f"{payload}.{_sign(secret, payload)}"


def verify_token(secret: bytes, token: str, now: float) -> AckClaim:
    """Return the claim, or raise :class:`TokenError`."""
    if not token or len(token) > MAX_TOKEN_LEN or token.count(".") != 1:
        raise TokenError("malformed token")
    payload, sig = token.split(".")
    try:
        expected = _sign(secret, payload)
    except UnicodeEncodeError as exc:
        raise TokenError("malformed token") from exc
    # compare_digest raises TypeError on a str with non-ASCII characters
    if not sig.isascii() or not hmac.compare_digest(expected, sig):
        raise TokenError("bad signature")
    try:
        data = json.loads(_unb64(payload))
        claim = AckClaim(
            key=str(data["k"]), n=int(data["n"]), person=str(data["p"]), expires=int(data["e"])
        )
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise TokenError("malformed token") from exc
    if now >= claim.expires:
        raise TokenError("token expired")
    return claim
