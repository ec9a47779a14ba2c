"""The Realtime WebSocket adapter: URL, handshake, backoff, and failure classification.

It knows nothing about the conversation: the supervisor feeds what arrives into the
session core and sends what the core asks for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from voiced.config import RealtimeSettings
from voiced.errors import RealtimeError

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024  # the API's own limit is 15 MiB per event
AUTH_CLOSE_CODE: Final = 3000  # invalid_api_key, missing bearer
REQUEST_SHAPE_CLOSE_CODE: Final = 4000  # invalid_model, beta_api_shape_disabled


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
                          user_agent: str, keepalive_s: float = 20.0) -> ClientConnection:
    """Open the WebSocket with bearer auth (GA: no ``OpenAI-Beta`` header).

    Raises:
        RealtimeError: classified by :func:`classify`.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return await connect(
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

    auth refused (HTTP 401/403, close 3000) → ``auth=True`` (error state, slow retries);
    request-shape refusal (close 4000: bad model, beta dialect) → not retryable;
    everything else (DNS, TCP, TLS, 1006, 1011, 5xx, timeouts) → retry with backoff.
    """
    if isinstance(exc, RealtimeError):
        return exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return RealtimeError(f"the server refused the API key (HTTP {status})",
                                 retryable=True, auth=True)
        return RealtimeError(f"handshake refused with HTTP {status}", retryable=True)
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd
        if frame is None:
            return RealtimeError("connection lost (1006: no close frame)", retryable=True)
        reason = f"server closed {frame.code}" + (f": {frame.reason}" if frame.reason else "")
        if frame.code == AUTH_CLOSE_CODE:
            return RealtimeError(reason, retryable=True, auth=True)
        if frame.code == REQUEST_SHAPE_CLOSE_CODE:
            return RealtimeError(reason, retryable=False)
        return RealtimeError(reason, retryable=True)
    if isinstance(exc, TimeoutError):
        return RealtimeError("timed out", retryable=True)
    if isinstance(exc, InvalidHandshake):
        return RealtimeError(f"handshake failed: {exc}", retryable=True)
    if isinstance(exc, OSError):
        return RealtimeError(f"cannot connect: {exc.strerror or exc}", retryable=True)
    return RealtimeError(f"{type(exc).__name__}: {exc}", retryable=True)


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
