"""Typed field readers for the server-event parsers (both dialects).

Each returns the field with the type it names or raises :class:`MalformedEvent`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from typing import Any

from voiced import guard
from voiced.wire.frames import (
    BYTES_PER_SAMPLE,
    LATEST_EPOCH_S,
    MAX_ID_CHARS,
    MAX_MESSAGE_CHARS,
    MalformedEvent,
)

logger = logging.getLogger("voiced.wire")  # one name for the package


def req_str(d: dict[str, Any], key: str) -> str:
    """The string field ``key``."""
    v = d.get(key)
    if not isinstance(v, str):
        raise MalformedEvent(f"{d.get('type')}: field {key!r} must be a string, got {v!r:.40}")
    return v


def req_id(d: dict[str, Any], key: str) -> str:
    """The id field ``key``: a string of at most :data:`MAX_ID_CHARS`."""
    v = req_str(d, key)
    if len(v) > MAX_ID_CHARS:
        raise MalformedEvent(f"{d.get('type')}: field {key!r} is {len(v)} characters long "
                             f"(at most {MAX_ID_CHARS})")
    return v


def opt_id(d: dict[str, Any], key: str) -> str | None:
    """The id field ``key``, or None when absent or null."""
    return None if d.get(key) is None else req_id(d, key)


def opt_str(d: dict[str, Any], key: str) -> str | None:
    """The string field ``key``, or None when absent or null."""
    v = d.get(key)
    if v is None or isinstance(v, str):
        return v
    raise MalformedEvent(f"{d.get('type')}: field {key!r} must be a string or null")


def req_int(d: dict[str, Any], key: str, default: int | None = None) -> int:
    """The integer field ``key`` (``default`` when absent, if given); never a boolean."""
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise MalformedEvent(f"{d.get('type')}: field {key!r} must be an integer, got {v!r:.40}")
    return v


def req_obj(d: dict[str, Any], key: str) -> dict[str, Any]:
    """The object field ``key``."""
    v = d.get(key)
    if not isinstance(v, dict):
        raise MalformedEvent(f"{d.get('type')}: field {key!r} must be an object")
    return v


def expiry(value: object, event: str = "session.created") -> float | None:
    """``expires_at`` as epoch seconds, or None when it is not a time at all.

    Infinity, NaN, 1e300, a negative number or a string are not refused as malformed:
    that would drop session.created and leave the session unconfigured. The session's
    end is then noticed when the server ends it (``session_expired``).
    """
    if value is None:
        return None
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            exp = float(value)
        except OverflowError:  # an integer with hundreds of digits
            exp = math.inf
        if math.isfinite(exp) and 0 < exp <= LATEST_EPOCH_S:
            return exp
    if guard.should_log("wire:expires_at") is not None:
        logger.warning("%s: expires_at %s is not a time; ignoring it (the "
                       "session's end is noticed when the server ends it)",
                       event, guard.printable(repr(value), 60))
    return None


def req_pcm(d: dict[str, Any], key: str = "delta") -> bytes:
    """Base64 PCM16 from field ``key``: valid base64, whole samples."""
    try:
        pcm = base64.b64decode(req_str(d, key), validate=True)
    except binascii.Error as e:
        raise MalformedEvent(f"{d.get('type')}: {key} is not base64 ({e})") from None
    if len(pcm) % BYTES_PER_SAMPLE:
        raise MalformedEvent(f"{d.get('type')}: {key} has an odd number of bytes ({len(pcm)})")
    return pcm


def error_message(value: object) -> str:
    """An error message from the server: text, cut at :data:`MAX_MESSAGE_CHARS`."""
    text = value if isinstance(value, str) else ""
    return text[:MAX_MESSAGE_CHARS]
