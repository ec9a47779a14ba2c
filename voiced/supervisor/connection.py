"""The device's Realtime connections: the live session, the standby, reconnects.

One loop holds the live connection and opens the next after a failure, with backoff
(reset after a stable minute); a rollover opens a standby :class:`~voiced.link.Link`
beside the live one and switches to it when the core says so. What arrives is parsed
and fed to the core (malformed frames counted, logged once a minute); what the core
sends goes to the link it names. ``realtime.classify`` decides what a failure means:
slow retries after an auth refusal, a config error (exit 78) for a refused request
shape at the first set-up or three in a row, backoff for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection

from voiced import __version__, guard, opus_link, wire
from voiced.backoff import Backoff
from voiced.config import RealtimeSettings
from voiced.core.conversation import Conversation
from voiced.errors import ConfigError, RealtimeError
from voiced.link import Link, Spawn, classify, create_task, open_connection
from voiced.notify import Notifier

logger = logging.getLogger("voiced.supervisor")  # the package logs as one

_STABLE_S = 60.0  # a connection that lasted this long resets the backoff
# close 4000 (request shape refused) answering this many set-ups in a row is final; the
# behind a relay whose session answers, the wait for the device's own update (core/setup.py)
RELAY_GRACE_S: Final = 30.0
# very first set-up of the daemon's life needs only one (the config is wrong)
_SHAPE_REFUSALS = 3

Feed = Callable[..., None]


def build_url(s: RealtimeSettings, conversation_id: str | None) -> str:
    """The URL to open: ``?model=`` for OpenAI, the relay's query when a relay is set.

    Query parameters already in ``realtime.url`` are kept.
    """
    parts = urlsplit(s.url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if s.relay is not None:
        query.append(("agent_id", s.relay.agent_id))
        query.append(("voice", s.voice))
        if conversation_id:  # none: the relay makes the conversation and announces it
            query.append(("conversation_id", conversation_id))
    else:
        query = [(k, v) for k, v in query if k != "model"] + [("model", s.model)]
    return urlunsplit(parts._replace(query=urlencode(query)))


class Connections:
    """The live connection and, during a rollover, the standby.

    Args:
        settings: the realtime settings in force (a SIGHUP may change them; read at
            each connection).
        session: the conversation core.
        feed: gives the core one input and applies its effects (the supervisor's).
        now: the loop's monotonic clock.
        notifier: for STATUS= while reconnecting.
    """

    def __init__(self, settings: Callable[[], RealtimeSettings], session: Conversation,
                 feed: Feed, now: Callable[[], float], notifier: Notifier) -> None:
        self._settings = settings
        self.session = session
        self._feed = feed
        self._now = now
        self.notifier = notifier
        # how reconnect delays are waited out (tests fast-forward them)
        self.backoff_wait: Callable[[Awaitable[Any], float], Awaitable[Any]] = \
            asyncio.wait_for
        self.live: Link | None = None
        self.standby: Link | None = None  # the next session, during a rollover
        self._background_tasks: set[asyncio.Task[None]] = set()  # opening/closing links
        self.spawn: Spawn = create_task
        """Starts the links' and the background tasks (the daemon's task group)."""
        self._reconnect_now = asyncio.Event()
        self.malformed_frames = 0
        self._ever_configured = False  # some session was configured since the start

    def url(self) -> str:
        """Where the next connection goes (a relay also gets the conversation id)."""
        rt = self._settings()
        return build_url(rt, self.session.conversation_id if rt.relay else None)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Hold a connection, reconnecting for good; raises ConfigError when final."""
        rt = self._settings()
        backoff = Backoff(rt.reconnect_min_s, rt.reconnect_max_s)
        failures = refusals = 0
        while True:
            rt = self._settings()  # a SIGHUP may have changed it
            backoff.min_s, backoff.max_s = rt.reconnect_min_s, rt.reconnect_max_s
            url = self.url()
            started = self._now()
            err: RealtimeError | None = None
            try:
                reason = await self._run_connection(url)
            except RealtimeError as e:
                err, reason = e, str(e)
            except OSError as e:
                err = classify(e)
                reason = str(err)
            except Exception as e:  # noqa: BLE001 - a bug here must not end the daemon
                guard.note_fault("realtime connection", e, logger)
                err = RealtimeError(f"unexpected error ({type(e).__name__})", retryable=True)
                reason = str(err)
            was_configured = self.session.connected
            self._ever_configured = self._ever_configured or was_configured
            self._feed("realtime", self.session.on_connection_down, reason)
            if self._reconnect_now.is_set():
                self._reconnect_now.clear()
                backoff.reset()
                continue
            if self._now() - started >= _STABLE_S:
                backoff.reset()
                failures = 0
            refusals = 0 if was_configured else refusals
            if err is not None and not err.retryable:
                # close 4000 (the beta dialect, an unknown model): final when it answers
                # the first set-up, or set-up after set-up; systemd's
                # RestartPreventExitStatus=78 then keeps the service down. A relay may
                # send it at any other moment: that is retried like any close.
                refusals += 1
                if not self._ever_configured or refusals >= _SHAPE_REFUSALS:
                    self.notifier.status(f"stopped: {reason}")
                    raise ConfigError([("realtime.url", f"the server refused the session: "
                                        f"{reason}; check realtime.url and realtime.model")])
                logger.warning("realtime: %s, %s; retrying", reason,
                               "mid-session" if was_configured else
                               f"{refusals} set-up(s) in a row")
            if err is not None and err.auth:
                fatal = reason if "openai_api_key" in reason else f"{reason}: check the API key"
                self._feed("realtime", self.session.on_fatal, fatal)
                delay = rt.reconnect_max_s
            else:
                delay = backoff.next()
            failures += 1
            log = logger.warning if failures == 1 else logger.debug
            log("realtime: %s; reconnecting in %.1f s", reason, delay)
            self.notifier.status(f"reconnecting in {delay:.0f} s: {reason}")
            with contextlib.suppress(TimeoutError):
                await self.backoff_wait(self._reconnect_now.wait(), delay)
            self._reconnect_now.clear()

    async def _open(self, url: str) -> ClientConnection:
        rt = self._settings()
        key = rt.api_key.reveal() if rt.api_key else None
        return await open_connection(url, key, timeout_s=rt.connect_timeout_s,
                                     user_agent=f"voiced/{__version__}",
                                     keepalive_s=rt.keepalive_s,
                                     extra_headers=opus_link.offer_headers(rt))  # opus:

    def _start_link(self, ws: ClientConnection) -> Link:
        link: Link

        def on_frame(frame: str | bytes) -> None:
            self._feed("realtime frame", self._on_frame, frame, link)

        def on_end() -> None:
            if link is self.standby:  # the next session ended before the switch
                self.standby = None
                self._feed("realtime standby", self.session.on_standby_down,
                           f"closed {link.ws.close_code}", self._now())

        link = Link(ws, on_frame, on_end, spawn=self.spawn,
                    codec=opus_link.negotiated(ws))  # opus: the relay's answer
        link.start()
        return link

    def _background(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            with guard.contain(name, logger):  # nobody awaits it: never lose a fault
                await coro

        task = self.spawn(guarded(), name)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    async def _run_connection(self, url: str) -> str:
        """Hold the live connection (and those a rollover moves it to) until it ends.

        Returns why it ended, in a few words.

        Raises:
            RealtimeError: the connection failed (classified).
        """
        rt = self._settings()
        link = self._start_link(await self._open(url))
        self.live = link
        logger.info("connected to %s", url.split("?")[0])
        self._feed("realtime", self.session.on_connection_up)
        timed_out: str | None = None

        async def close_on_reconnect() -> None:
            await self._reconnect_now.wait()
            if self.live is not None:
                await self.live.ws.close(1000, "client reconnecting")

        async def configure_deadline() -> None:
            nonlocal timed_out
            await asyncio.sleep(rt.connect_timeout_s)
            why = f"no session.created/updated within {rt.connect_timeout_s:g} s"
            if self.session.awaiting_relay:
                # the session answers; a relay may hold the device's update a while
                logger.info("the relay has not passed the device's session.update on yet; "
                            "waiting up to %g s more", RELAY_GRACE_S)
                await asyncio.sleep(RELAY_GRACE_S)
                why = ("the relay did not pass on the device's session.update and its "
                       "input_audio_buffer.clear within "
                       f"{rt.connect_timeout_s + RELAY_GRACE_S:g} s")
            if not self.session.connected:
                timed_out = why
                await link.ws.close(1000, "no session in time")

        helpers = [asyncio.create_task(close_on_reconnect(), name="realtime-reconnect"),
                   asyncio.create_task(configure_deadline(), name="realtime-deadline")]
        try:
            while True:
                # a rollover replaces self.live: the old link's end is then expected
                current = self.live
                assert current is not None
                await asyncio.wait([current.reader])
                if self.live is current:
                    break
            current.raise_failure()  # the classified failure, if it failed
        finally:
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            for old in (self.live, self.standby):
                if old is not None:
                    await old.aclose()
            self.live = self.standby = None
        if timed_out is not None:
            raise RealtimeError(timed_out, retryable=True)
        if self._reconnect_now.is_set():
            return "reconnect requested"
        ws = current.ws
        return f"server closed {ws.close_code}" + (
            f": {guard.printable(ws.close_reason, 123)}" if ws.close_reason else "")

    async def _open_standby(self) -> None:
        """Open the next session for a rollover; the core configures it and switches."""
        rt = self._settings()
        try:
            ws = await self._open(self.url())
        except (RealtimeError, OSError) as e:
            reason = str(e if isinstance(e, RealtimeError) else classify(e))
            self._feed("realtime standby", self.session.on_standby_down, reason, self._now())
            return
        if self.session.standby is None or self.live is None:  # no longer wanted
            await ws.close(1000, "not needed")
            return
        link = self.standby = self._start_link(ws)
        self._feed("realtime standby", self.session.on_standby_up)
        await asyncio.sleep(rt.connect_timeout_s)
        if self.standby is link and self.session.standby != "ready":
            self.standby = None
            await link.aclose("no session in time")
            self._feed("realtime standby", self.session.on_standby_down,
                       "no session.updated in time", self._now())

    def _on_frame(self, frame: str | bytes, link: Link) -> None:
        """One frame into the core (``feed`` contains and applies what follows)."""
        try:
            ev = wire.parse_server_event(frame)
        except wire.MalformedEvent as e:
            self.malformed_frames += 1
            skipped = guard.should_log("supervisor:malformed-frame")
            if skipped is not None:
                logger.warning("ignoring malformed server frame (%d so far%s): %s",
                               self.malformed_frames,
                               f", {skipped} not shown since the last" if skipped else "",
                               guard.printable(e, 200))
            return
        if link is self.standby:
            self.session.on_standby_event(ev, self._now())
        elif link is self.live:
            if isinstance(ev, wire.SessionUpdated) and self.session.fatal_reason is not None:
                self.session.on_fatal_cleared()
            self.session.on_server_event(ev, self._now())
        else:  # the session a rollover left, closing
            logger.debug("old session: %s", guard.printable(getattr(ev, "type", "?"), 100))

    # ------------------------------------------------------------------ effects

    def send(self, event: wire.ClientEvent, *, standby: bool) -> None:
        """Queue a client event on the live connection (or the standby)."""
        link = self.standby if standby else self.live
        if link is not None:
            link.send(event)

    def reconnect(self, reason: str) -> None:
        """Close the live connection and open a fresh session at once."""
        logger.info("reconnecting: %s", reason)
        self._reconnect_now.set()

    def open_standby(self) -> None:
        """Open the standby connection for a rollover (in the background)."""
        self._background(self._open_standby(), "realtime-standby")

    def switch(self) -> None:
        """The standby becomes the live connection; the old one is retired."""
        if self.standby is None:  # cannot happen; never strand the core
            logger.error("rollover without a standby connection: reconnecting")
            self._reconnect_now.set()
            return
        old, self.live, self.standby = self.live, self.standby, None
        if old is not None:
            self._background(old.retire("session rollover"), "realtime-retire")
        logger.info("now on the next session")

    def close_standby(self, reason: str) -> None:
        """Close the standby connection, if there is one."""
        if self.standby is not None:
            link, self.standby = self.standby, None
            self._background(link.aclose(reason), "realtime-standby-close")

    async def aclose(self) -> None:
        """Cancel what runs in the background and close both connections."""
        for task in list(self._background_tasks):
            task.cancel()
        for link in (self.live, self.standby):
            if link is not None:
                await link.aclose()
