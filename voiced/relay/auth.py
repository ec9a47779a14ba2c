"""Device tokens and connection rate limits (pure: no I/O, time passed in).

A token is 32 random bytes (``secrets.token_urlsafe``) behind a ``vrt_`` prefix, so a
leaked one is recognisable. Only its SHA-256 is stored: with 256 bits of entropy a
slow password hash adds nothing (nobody can guess a preimage), and a stolen table
gives no working token. The database finds the row by that hash; the relay then
compares the hashes again with :func:`hmac.compare_digest`, so no comparison it makes
takes longer for a closer guess.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

TOKEN_PREFIX: Final = "vrt_"
TOKEN_MAX_LEN: Final = 200
SUBPROTOCOL: Final = "voiced-relay"
TOKEN_SUBPROTOCOL_PREFIX: Final = "voiced-token."
"""Browsers cannot set Authorization on a WebSocket: they offer the subprotocols
``voiced-relay`` and ``voiced-token.<token>``; the relay answers ``voiced-relay``."""


def new_token() -> str:
    """A fresh device token (shown once by ``voiced relay add-device``)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    """What the database stores for ``token``."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def same_hash(a: bytes, b: bytes) -> bool:
    """Constant-time equality of two token hashes."""
    return hmac.compare_digest(a, b)


def token_from(headers: Mapping[str, str], subprotocols: str | None) -> tuple[str | None, str]:
    """The token a handshake carries, and where it came from (for the log).

    ``Authorization: Bearer <token>`` first (devices); otherwise a ``voiced-token.``
    subprotocol (browsers). Never the query string: URLs end up in proxy logs, browser
    history and Referer headers. Returns (None, why) when there is none or it is unusable.
    """
    auth = headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return None, "an Authorization header that is not 'Bearer <token>'"
        if len(value) > TOKEN_MAX_LEN:
            return None, "an overlong bearer token"
        return value, "header"
    for offer in (subprotocols or "").split(","):
        offer = offer.strip()
        if offer.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            value = offer[len(TOKEN_SUBPROTOCOL_PREFIX):]
            if not value or len(value) > TOKEN_MAX_LEN:
                return None, "an unusable token subprotocol"
            return value, "subprotocol"
    return None, "no token (Authorization: Bearer <token>)"


class TokenBucket:
    """``burst`` tokens, refilled at ``rate_per_s``; :meth:`take` spends one."""

    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.level = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` if there is that much; False (and nothing spent) otherwise."""
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level >= cost:
            self.level -= cost
            return True
        return False

    def wait_s(self) -> float:
        """How long until one more token is there (for Retry-After)."""
        return max(0.0, (1.0 - self.level) / self.rate) if self.rate > 0 else 60.0


class RateLimiter:
    """One token bucket per key (device name or client address), bounded in number.

    The least recently used buckets are forgotten beyond ``max_keys``: an attacker
    cycling addresses costs bounded memory, and a forgotten bucket was idle anyway.
    """

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 50_000) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, key: str, now: float) -> float | None:
        """None when ``key`` may go on; else the seconds to wait (for Retry-After)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now):
            return None
        return bucket.wait_s()

    def __len__(self) -> int:
        return len(self._buckets)
