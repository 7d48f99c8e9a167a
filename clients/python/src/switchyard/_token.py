"""Access tokens the gateway accepts: HS256 JWTs signed with AUTH_SECRET.

Standard library only (hmac + hashlib): a JWT is three base64url parts, and
the gateway accepts exactly one algorithm, so a JWT library would add a
dependency for a dozen lines.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterable
from datetime import timedelta

__all__ = ["mint_token"]

#: Shortest AUTH_SECRET the gateway accepts.
MIN_SECRET_BYTES = 32


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def mint_token(
    subscribe: Iterable[str] = (),
    publish: Iterable[str] = (),
    ttl: float | timedelta = 3600,
    secret: str | None = None,
    *,
    sub: str | None = None,
    admin: bool = False,
) -> str:
    """A token for a switchyard gateway with the same AUTH_SECRET.

    ``subscribe`` and ``publish`` are topic patterns (``positions/#``,
    ``orders/+``); ``ttl`` is seconds or a ``timedelta``; ``secret`` defaults
    to the ``AUTH_SECRET`` environment variable; ``sub`` names the holder in
    the gateway's logs; ``admin`` opens the console, metrics and every topic.
    """
    key = secret if secret is not None else os.environ.get("AUTH_SECRET", "")
    if len(key.encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes "
            "(pass secret= or set the AUTH_SECRET environment variable)"
        )
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if seconds <= 0:
        raise ValueError("ttl must be positive")
    claims: dict[str, object] = {"exp": int(time.time() + seconds)}
    if sub is not None:
        claims["sub"] = sub
    if isinstance(subscribe, str) or isinstance(publish, str):
        raise TypeError("subscribe and publish take a list of patterns, not one string")
    if subscribe := list(subscribe):
        claims["subscribe"] = subscribe
    if publish := list(publish):
        claims["publish"] = publish
    if admin:
        claims["admin"] = True
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = hmac.new(key.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (not verified), or None when it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (IndexError, ValueError):
        return None
    return float(exp) if isinstance(exp, int | float) else None
