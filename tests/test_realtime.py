"""The Realtime adapter: failure classification and the handshake, against real sockets."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidHeaderValue
from websockets.frames import Close

from tests.hostile import HostileServer
from voiced.errors import RealtimeError
from voiced.link import classify, open_connection

KEY = "sk-test-REALTIME-secret-key"


@pytest.mark.parametrize("key", [f"{KEY}\nsecond-line", f"{KEY}\u200b", f"{KEY}\x01",
                                 f"{KEY}€"])
async def test_a_key_that_is_no_header_says_so_without_quoting_it(key: str) -> None:
    """Issue 17, finding 1: websockets' InvalidHeaderValue text holds "Bearer <key>",
    and classify() put it in the reason (the log, `ctl status`, STATUS=)."""
    async with HostileServer() as server:
        with pytest.raises(RealtimeError) as caught:
            await open_connection(server.url, key, timeout_s=5, user_agent="t")
    err = caught.value
    assert err.auth and err.retryable
    assert "openai_api_key" in str(err) and "Authorization" in str(err)
    for part in ("REALTIME-secret", "second-line", "Bearer"):
        assert part not in str(err)
    assert server.attempts == 0  # the request never left


def test_no_handshake_exception_text_is_interpolated() -> None:
    err = classify(InvalidHeaderValue("X-Custom", f"Bearer {KEY}"))
    assert KEY not in str(err) and "X-Custom" in str(err)


def test_an_oversized_frame_and_a_keepalive_timeout_are_told_apart() -> None:
    """Low: both were "connection lost (1006: no close frame)"."""
    too_big = classify(ConnectionClosedError(
        None, Close(1009, "frame with 17825792 bytes exceeds limit of 16777216 bytes")))
    silent = classify(ConnectionClosedError(None, Close(1011, "keepalive ping timeout")))
    dropped = classify(ConnectionClosedError(None, None))
    assert "too big" in str(too_big) and "1006" not in str(too_big)
    assert "keepalive" in str(silent) and "1006" not in str(silent)
    assert "1006" in str(dropped)
    assert all(e.retryable and not e.auth for e in (too_big, silent, dropped))


def test_a_close_reason_is_one_printable_line() -> None:
    err = classify(ConnectionClosedError(Close(4321, "bye\nWATCHDOG=trigger"), None))
    assert str(err) == "server closed 4321: bye\\nWATCHDOG=trigger"


async def test_a_redirect_is_reported_not_followed() -> None:
    """Finding 16: a 3xx on the Realtime URL was followed without re-checking the
    loopback/TLS rule (websockets forbids only wss→ws)."""
    async with HostileServer() as target:
        async with HostileServer(redirect_to=f"{target.url}?token=theirs") as server:
            with pytest.raises(RealtimeError) as caught:
                await open_connection(server.url, KEY, timeout_s=5, user_agent="t")
    assert target.attempts == 0
    text = str(caught.value)
    assert "redirect" in text and "HTTP 307" in text and "realtime.url" in text
    assert f"ws://127.0.0.1:{target.port}" in text and "token" not in text
    assert caught.value.retryable and not caught.value.auth
