"""The Realtime WebSocket adapter: URL, handshake, backoff, and failure classification.

It knows nothing about the conversation: the supervisor feeds what arrives into the
session core and sends what the core asks for.

What a failure says is built from status codes, close codes and our own words, never
from a handshake exception's text: websockets quotes the offending header in it, and
that header can be ``Authorization: Bearer <key>`` (issue 17, finding 1). A close reason
is server text, so it goes through ``guard.printable``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidHeader,
    InvalidStatus,
    InvalidURI,
)

from voiced import guard
from voiced.config import RealtimeSettings
from voiced.errors import RealtimeError

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024  # the API's own limit is 15 MiB per event
AUTH_CLOSE_CODE: Final = 3000  # invalid_api_key, missing bearer
REQUEST_SHAPE_CLOSE_CODE: Final = 4000  # invalid_model, beta_api_shape_disabled
_TOO_BIG_CLOSE_CODE: Final = 1009  # we closed: a frame over MAX_FRAME_BYTES
_INTERNAL_CLOSE_CODE: Final = 1011  # we closed: websockets' keepalive ping timed out
_REDIRECTS: Final = (300, 301, 302, 303, 307, 308)


class _NoRedirects(connect):
    """websockets' ``connect`` that reports a redirect instead of following it.

    *Why not follow:* the Realtime API does not redirect, so a redirect is a
    misconfiguration or an attack. Following it would skip the config's rule (wss://, or
    ws:// to loopback only: websockets forbids only a wss→ws downgrade, so ws://127.0.0.1
    could be sent on to plain ws:// anywhere), and cross-origin websockets drops the
    bearer header, so the new host would refuse us with a misleading auth error.
    """

    def process_redirect(self, exc: Exception) -> Exception | str:
        """Never a URL to follow: the 3xx surfaces as the InvalidStatus it is."""
        return exc


def build_url(s: RealtimeSettings, conversation_id: str | None) -> str:
    """The URL to open: ``?model=`` for OpenAI, the relay's query when a relay is set.

    Query parameters already in ``realtime.url`` are kept.
    """
    parts = urlsplit(s.url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if s.relay is not None:
        query.append(("agent_id", s.relay.agent_id))
        query.append(("voice", s.voice))
        cid = conversation_id or s.relay.conversation_id
        if cid:
            query.append(("conversation_id", cid))
    else:
        query = [(k, v) for k, v in query if k != "model"] + [("model", s.model)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def open_connection(url: str, api_key: str | None, *, timeout_s: float,
                          user_agent: str, keepalive_s: float = 20.0,
                          extra_headers: dict[str, str] | None = None) -> ClientConnection:
    """Open the WebSocket with bearer auth (GA: no ``OpenAI-Beta`` header).

    Raises:
        RealtimeError: classified by :func:`classify`.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    headers.update(extra_headers or {})  # opus: the relay audio offer
    try:
        return await _NoRedirects(
            url, additional_headers=headers, open_timeout=timeout_s,
            # NOTE: our own pings notice a dead peer within two keepalive periods
            ping_interval=keepalive_s, ping_timeout=keepalive_s, close_timeout=5,
            max_size=MAX_FRAME_BYTES, compression=None,
            user_agent_header=user_agent,
        )
    except Exception as e:  # noqa: BLE001 - every failure is classified, none escapes raw
        raise classify(e) from e


def classify(exc: BaseException) -> RealtimeError:
    """Decide what a connection failure means: retry soon, retry slowly (auth), or stop.

    auth refused (HTTP 401/403, close 3000), or a key that cannot be sent as a header →
    ``auth=True`` (error state, slow retries); request-shape refusal (close 4000: bad
    model, beta dialect) → not retryable (the supervisor decides when that is final);
    everything else (DNS, TCP, TLS, 1006, 1009, 1011, 5xx, redirects, timeouts) → retry
    with backoff.
    """
    if isinstance(exc, RealtimeError):
        return exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return RealtimeError(f"the server refused the API key (HTTP {status})",
                                 retryable=True, auth=True)
        if status in _REDIRECTS:
            return RealtimeError(f"the server redirected (HTTP {status}) to "
                                 f"{_origin(exc.response.headers.get('Location'))}; "
                                 "redirects are not followed: set realtime.url to the "
                                 "final address", retryable=True)
        return RealtimeError(f"handshake refused with HTTP {status}", retryable=True)
    if isinstance(exc, ConnectionClosed):
        return _closed(exc)
    if isinstance(exc, TimeoutError):
        return RealtimeError("timed out", retryable=True)
    if isinstance(exc, InvalidHeader):
        # NOTE: its text quotes the header's value, which may be "Bearer <key>"
        if exc.name.lower() == "authorization":
            return RealtimeError("the API key cannot be sent: it is not one header-safe "
                                 "line (invalid Authorization header); check credential "
                                 "openai_api_key", retryable=True, auth=True)
        return RealtimeError(f"handshake failed: invalid {guard.printable(exc.name, 60)} "
                             "header", retryable=True)
    if isinstance(exc, InvalidURI):
        return RealtimeError("handshake failed: realtime.url is not a valid WebSocket URL",
                             retryable=True)
    if isinstance(exc, InvalidHandshake):
        return RealtimeError(f"handshake failed ({type(exc).__name__})", retryable=True)
    if isinstance(exc, OSError):
        return RealtimeError(f"cannot connect: {guard.printable(exc.strerror or exc)}",
                             retryable=True)
    return RealtimeError(f"{type(exc).__name__}: {guard.printable(exc)}", retryable=True)


def _closed(exc: ConnectionClosed) -> RealtimeError:
    """What a closed connection means, in words that tell the causes apart."""
    frame = exc.rcvd
    if frame is None:
        sent = exc.sent
        if sent is not None and sent.code == _TOO_BIG_CLOSE_CODE:
            return RealtimeError(f"the server sent a frame too big (over "
                                 f"{MAX_FRAME_BYTES >> 20} MiB; closed 1009)", retryable=True)
        if sent is not None and sent.code == _INTERNAL_CLOSE_CODE and "keepalive" in sent.reason:
            return RealtimeError("no answer to keepalive pings (the server or the network "
                                 "went silent)", retryable=True)
        return RealtimeError("connection lost (1006: no close frame)", retryable=True)
    reason = f"server closed {frame.code}" + (
        f": {guard.printable(frame.reason, 123)}" if frame.reason else "")
    if frame.code == AUTH_CLOSE_CODE:
        return RealtimeError(reason, retryable=True, auth=True)
    if frame.code == REQUEST_SHAPE_CLOSE_CODE:
        return RealtimeError(reason, retryable=False)
    return RealtimeError(reason, retryable=True)


def _origin(location: str | None) -> str:
    """Where a redirect points, as scheme://host[:port] only.

    Its path or query may carry someone else's token.
    """
    if not location:
        return "nowhere"
    try:
        parts = urlsplit(location)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an invalid address"
    return guard.printable(f"{parts.scheme or '?'}://{host}{port}", 120)


@dataclass
class Backoff:
    """Jittered exponential reconnect delays.

    Each delay is drawn uniformly from [base/2, base] where base doubles from
    ``min_s`` up to ``max_s``; :meth:`reset` after a connection proved stable.
    """

    min_s: float = 0.5
    max_s: float = 30.0
    rand: Callable[[], float] = random.random
    attempts: int = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        base = min(self.max_s, self.min_s * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return float(base * (0.5 + 0.5 * self.rand()))

    def reset(self) -> None:
        """Start again from the shortest delay."""
        self.attempts = 0
