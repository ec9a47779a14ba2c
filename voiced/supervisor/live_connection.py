"""The device's GPT-Live connection: opened when the core asks, closed when it says.

Unlike the Realtime loop (:mod:`.connection`), nothing here holds a connection for good:
a Live session bills every second it is open, so the core decides. ``Reconnect`` (the
user started talking, or the core's own reconnect after a backoff) opens one;
``Disconnect`` (the session closed, went quiet, or was refused) closes it once what was
queued has been sent; every end goes back to the core with ``on_connection_down``, which
decides whether a new session follows (docs/architecture.md, "GPT-Live backend"). The
handshake is the Realtime link's (:func:`voiced.link.open_connection`: TLS, no redirects,
the key never in a log, ws:// to loopback only by the config's rule), and so are the
reader and the sender (:class:`voiced.link.Link`).

An auth refusal at the handshake is the error state (a person must fix the key); the
core does not retry it by itself, and the next press tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection

from voiced import __version__, guard, wire
from voiced.config import RealtimeSettings
from voiced.errors import RealtimeError
from voiced.link import Link, Spawn, classify, create_task, open_connection
from voiced.live import wire as lw
from voiced.live.core import LiveConversation
from voiced.notify import Notifier

logger = logging.getLogger("voiced.supervisor")  # the package logs as one

Feed = Callable[..., None]


class LiveConnections:
    """At most one Live connection, opened and closed at the core's word.

    Args:
        settings: the realtime settings in force (read at each connection).
        session: the Live core.
        feed: gives the core one input and applies its effects (the supervisor's).
        now: the loop's monotonic clock.
        notifier: for STATUS= while a session opens.
    """

    def __init__(self, settings: Callable[[], RealtimeSettings], session: LiveConversation,
                 feed: Feed, now: Callable[[], float], notifier: Notifier) -> None:
        self._settings = settings
        self.session = session
        self._feed = feed
        self._now = now
        self.notifier = notifier
        # the Realtime loop's seam, kept for the daemon's property (the core waits out
        # its own reconnect delays on its clock)
        self.backoff_wait: Callable[[Awaitable[Any], float], Awaitable[Any]] = \
            asyncio.wait_for
        self.live: Link | None = None
        self.spawn: Spawn = create_task
        self._open_wanted = asyncio.Event()
        self._close_wanted: asyncio.Event = asyncio.Event()
        self._close_reason = ""
        self.malformed_frames = 0
        self.connections = 0

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Open a connection each time the core asks, hold it until it ends."""
        while True:
            await self._open_wanted.wait()
            self._open_wanted.clear()
            self._close_wanted.clear()
            try:
                reason = await self._hold()
            except Exception as e:  # noqa: BLE001 - a bug here must not end the daemon
                guard.note_fault("live connection", e, logger)
                reason = f"unexpected error ({type(e).__name__})"
            self._feed("live", self.session.on_connection_down, reason, self._now())

    async def _open(self) -> ClientConnection:
        rt = self._settings()
        key = rt.api_key.reveal() if rt.api_key else None
        return await open_connection(rt.live.url, key, timeout_s=rt.connect_timeout_s,
                                     user_agent=f"voiced/{__version__}",
                                     keepalive_s=rt.keepalive_s)

    async def _hold(self) -> str:
        """One connection from its handshake to its end; returns why it ended."""
        url = self._settings().live.url
        self.notifier.status("connecting: opening a Live session")
        try:
            ws = await self._open()
        except (RealtimeError, OSError) as e:
            err = e if isinstance(e, RealtimeError) else classify(e)
            logger.warning("live: %s", err)
            if err.auth:
                self._feed("live", self.session.on_fatal,
                           f"{err}: check the API key (credential openai_api_key)")
            return str(err)
        self.connections += 1
        link = Link(ws, lambda frame: self._feed("live frame", self._on_frame, frame),
                    spawn=self.spawn)
        link.start()
        self.live = link
        logger.info("connected to %s", url)
        self._feed("live", self.session.on_connection_up, self._now())
        closing = asyncio.create_task(self._close_wanted.wait(), name="live-close")
        try:
            await asyncio.wait([link.reader, closing], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closing
            self.live = None
            if self._close_wanted.is_set():
                await link.retire(self._close_reason)  # session.close and the rest first
            else:
                await link.aclose()
        if self._close_wanted.is_set():
            return self._close_reason or "closed"
        if link.failure is not None:
            return str(link.failure)
        ws_ = link.ws
        return f"server closed {ws_.close_code}" + (
            f": {guard.printable(ws_.close_reason, 123)}" if ws_.close_reason else "")

    def _on_frame(self, frame: str | bytes) -> None:
        """One frame into the core (``feed`` contains and applies what follows)."""
        try:
            ev = lw.parse_server_event(frame)
        except wire.MalformedEvent as e:
            self.malformed_frames += 1
            skipped = guard.should_log("supervisor:malformed-frame")
            if skipped is not None:
                logger.warning("ignoring malformed server frame (%d so far%s): %s",
                               self.malformed_frames,
                               f", {skipped} not shown since the last" if skipped else "",
                               guard.printable(e, 200))
            return
        if isinstance(ev, lw.SessionStarted) and self.session.fatal_reason is not None:
            self.session.on_fatal_cleared()
        self.session.on_server_event(ev, self._now())

    # ------------------------------------------------------------------ effects

    def send(self, event: wire.ClientEvent, *, standby: bool = False) -> None:
        """Queue a client event on the open connection (dropped when there is none)."""
        if self.live is not None:
            self.live.send(event)

    def reconnect(self, reason: str) -> None:
        """``Reconnect``: open a connection.

        One still open (a session that expired mid-conversation) is retired first.
        """
        logger.info("opening a Live session: %s", reason)
        if self.live is not None:
            self.disconnect("a new session")
        self._open_wanted.set()

    def disconnect(self, reason: str) -> None:
        """``Disconnect``: close the connection once what was queued has gone."""
        logger.info("closing the Live connection: %s", reason)
        self._close_reason = reason
        self._close_wanted.set()

    async def aclose(self) -> None:
        """Close the connection, if one is open."""
        if self.live is not None:
            await self.live.aclose("stopping")
