"""HTTP peers (the webhook and Supabase sinks, HTTP tools): bounded reads, no redirects.

A redirect is not followed because the request carries a credential (a bearer token,
Supabase's ``apikey``, a tool's ``X-Api-Key``) that must never reach another origin,
and because a 3xx is not the sink accepting a record. Bodies are read up to a limit: a
peer that sends 400 MB (or an endless stream) costs the device that limit, not its
memory. aiohttp decompresses incrementally, so the limit holds for compressed replies
too.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from voiced import guard

ERROR_BODY_LIMIT: Final = 65_536
"""Bytes of a sink's error reply read (only the first 200 characters are logged)."""


class BodyTooLarge(Exception):
    """The peer's reply is longer than the limit; it was not read to the end."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the reply is more than {limit} bytes")
        self.limit = limit


async def _read_prefix(resp: Any, limit: int) -> bytes:
    """The first ``limit`` bytes of an aiohttp response's body (fewer if it ends)."""
    data = bytearray()
    while len(data) < limit:
        chunk = await resp.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def read_body(resp: Any, limit: int) -> bytes:
    """An aiohttp response's whole body, if it is at most ``limit`` bytes.

    Raises:
        BodyTooLarge: the declared length or the body itself is longer (the rest is
            never read).
    """
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    data = await _read_prefix(resp, limit + 1)
    if len(data) > limit:
        raise BodyTooLarge(limit)
    return data


async def read_text(resp: Any, limit: int) -> str:
    """The start of a reply as text, for an error message: at most ``limit`` bytes."""
    return (await _read_prefix(resp, limit)).decode("utf-8", errors="replace")


def is_redirect(status: int) -> bool:
    """A 3xx that would send the client elsewhere (304 is not a redirect)."""
    return 300 <= status < 400 and status != 304


def redirect_reason(resp: Any) -> str:
    """A redirect as one line: status and target origin, never the target's query."""
    location = resp.headers.get("Location", "")
    try:
        parts = urlsplit(location)
        where = f"{parts.scheme}://{parts.hostname}" if parts.hostname else "the same host"
    except ValueError:
        where = "somewhere unparsable"
    return (f"HTTP {resp.status}: a redirect to {guard.printable(where, 100)}, not "
            "followed (a credential must not go elsewhere); update the URL")
