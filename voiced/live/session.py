"""The Live session's life: open on demand, start, close when quiet, reconnect, bill.

A session costs money for every minute it is open, silence included, so it is opened
only when the user starts talking (``Reconnect``) and closed (``session.close``, then
:class:`~voiced.live.settings.Disconnect`) once nothing happened for ``quiet_close_s``.
A session lost while the conversation is active is replaced after a backoff, seeded with
the recent turns (the SDK's own reconnect opens a session that was never started).
Billing adds up each session's final usage, or an estimate where none came.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from voiced import guard
from voiced.backoff import Backoff
from voiced.core.effects import MicOpened, Reconnect
from voiced.live import wire as lw
from voiced.live.delegation import Delegations
from voiced.live.facts import LiveFacts, Out
from voiced.live.records import Records
from voiced.live.settings import FATAL_ERRORS, START_TIMEOUT_S, Disconnect
from voiced.live.track import Track
from voiced.live.uplink import Uplink

logger = logging.getLogger("voiced.live.core")


class Sessions:
    """The phase of the session, its start and end, the reconnect policy, the billing."""

    def __init__(self, facts: LiveFacts, out: Out, *, uplink: Uplink, track: Track,
                 records: Records, delegations: Delegations,
                 rand: Callable[[], float]) -> None:
        self.facts = facts
        self.out = out
        self.uplink = uplink
        self.track = track
        self.records = records
        self.delegations = delegations
        self._backoff = Backoff(rand=rand)
        self.conn_up = False
        self._start_event: str | None = None
        self._retry_at = 0.0
        self.reopen = False  # a press while the session closed: open a new one after
        self._disconnecting = False  # a Disconnect was emitted; on_connection_down follows
        # billing
        self._billed_done_s = 0.0  # sessions over: their final usage (or estimate)
        self._billed_reported_s = 0.0  # of which the server reported
        self._usage_s: float | None = None  # the open session's latest snapshot
        self._started_at: float | None = None

    def billed_seconds(self, now: float) -> tuple[float, float]:
        """Seconds billed so far, and of those the seconds the server reported.

        Every session's final usage, plus the open one's latest snapshot or its time
        since it started, whichever is more (an estimate while open).
        """
        total = self._billed_done_s
        if self._started_at is not None:
            total += max(self._usage_s or 0.0, now - self._started_at)
        return total, self._billed_reported_s + (self._usage_s or 0.0)

    # ------------------------------------------------------------- connection inputs

    def on_connection_up(self, now: float) -> None:
        """The WebSocket is open: start the session (``session.start``)."""
        f = self.facts
        self.conn_up = True
        self._disconnecting = False
        if f.phase != "connecting":
            logger.warning("a Live connection opened while %s: closing it", f.phase)
            self.out.emit(Disconnect("not wanted"))
            return
        f.set_phase("starting", now)
        self._start_event = self.out.eid()
        history = self.records.seed()
        if history:
            logger.info("seeding the new session with %d earlier turn(s)", len(history))
        s = f.settings
        self.out.send(lw.session_start(
            self._start_event, model=s.model, instructions=self.delegations.instructions(),
            voice=s.voice, ack_delay_ms=s.ack_delay_ms,
            history=history, safety_identifier=s.safety_identifier))

    def on_connection_down(self, reason: str, now: float) -> None:
        """The WebSocket closed or could not open; ``reason`` is a few words."""
        f = self.facts
        was_up, self.conn_up = self.conn_up, False
        self._disconnecting = False
        phase = f.phase
        if phase == "connecting" and was_up:
            return  # the previous connection, closed for the one being opened
        if phase in ("starting", "open", "closing"):
            self.session_over(None, now)
        if phase in ("closing", "ended", "idle"):
            f.set_phase("idle", now)
            if self.reopen:
                self.reopen = False
                self.open(now, "the user started talking")
        elif self.wanted(now) and f.fatal is None:
            # the settings may have changed (SIGHUP) since the last attempt
            self._backoff.min_s = f.settings.reconnect_min_s
            self._backoff.max_s = f.settings.reconnect_max_s
            delay = self._backoff.next()
            self._retry_at = now + delay
            logger.info("Live connection lost (%s): a new session in %.1f s",
                        guard.printable(reason, 100), delay)
            f.set_phase("waiting", now)
        else:
            logger.info("Live connection closed (%s)", guard.printable(reason, 100))
            f.mic_on = False
            f.set_phase("idle", now)

    def on_tick(self, now: float) -> None:
        """Reconnects, the quiet close, timeouts."""
        f = self.facts
        phase = f.phase
        if phase == "waiting" and now >= self._retry_at:
            if self.wanted(now):
                f.counters.reconnects += 1
                self.open(now, "reconnecting")
            else:
                logger.info("nobody is talking any more: not reconnecting")
                f.mic_on = False
                f.set_phase("idle", now)
        elif (phase == "starting" and now - f.phase_at > START_TIMEOUT_S
              and not self._disconnecting):
            # its on_connection_down is then a lost session like any other: backoff
            logger.warning("session.started did not come within %g s", START_TIMEOUT_S)
            self._disconnect("session.started did not come")
        elif (phase == "closing" and now - f.phase_at > f.settings.close_wait_s
              and not self._disconnecting):
            logger.info("session.closed did not come within %g s: closing the connection",
                        f.settings.close_wait_s)
            self._disconnect("session.closed did not come")
        elif phase == "open" and self._quiet(now):
            logger.info("no conversation for %g s: closing the session (it bills while "
                        "open)", f.settings.quiet_close_s)
            f.mic_on = False
            self._close(now)

    # ------------------------------------------------------------------ server inputs

    def on_started(self, ev: lw.SessionStarted, now: float) -> None:
        """``session.started``: the session is open; what was said meanwhile goes out."""
        f = self.facts
        if f.phase != "starting":
            logger.warning("session.started while %s: ignored", f.phase)
            return
        f.set_phase("open", now)
        f.session_no += 1
        f.session_id = ev.session_id
        f.expires_at = ev.expires_at
        f.model = ev.model or f.settings.model
        self._started_at = now
        self._usage_s = None
        self._backoff.reset()
        f.last_activity = now
        f.timeline = 0
        f.server_muted = False
        self.track.new_session()
        self.records.new_session()
        f.counters.sessions += 1
        logger.info("Live session %s started (%s)", guard.printable(ev.session_id, 100),
                    guard.printable(f.model, 100))
        if not f.mic_on:
            self.out.send(lw.mute(self.out.eid(), True))
        self.uplink.send_prestart()

    def on_usage(self, ev: lw.UsageUpdated) -> None:
        """``session.usage.updated``: the open session's cumulative seconds."""
        if ev.seconds is not None and self._started_at is not None:
            self._usage_s = ev.seconds

    def on_closed(self, ev: lw.SessionClosed, now: float) -> None:
        """``session.closed``: asked for, the safety filter, or expired mid-conversation."""
        f = self.facts
        if f.phase not in ("starting", "open", "closing"):
            return  # a session already over
        logger.info("Live session ended: %s", guard.printable(ev.reason, 40))
        asked = f.phase == "closing"
        if ev.seconds is not None and self._started_at is not None:
            self._usage_s = ev.seconds
        self.session_over(ev.seconds, now)
        if asked or ev.reason == "close_requested":
            self._disconnect("session closed")
            f.set_phase("ended", now)  # the socket's close is the end of it
        elif ev.reason == "content":
            logger.warning("the service ended the session (its safety filter)")
            f.mic_on = False
            self._disconnect("closed by the service: content")
            f.set_phase("ended", now)
        elif self.wanted(now):
            logger.info("the session ended (%s) mid-conversation: opening a new one",
                        guard.printable(ev.reason, 40))
            f.counters.reconnects += 1
            self.open(now, f"session {ev.reason}")
        else:
            f.mic_on = False
            self._disconnect(f"session {ev.reason}")
            f.set_phase("ended", now)

    def on_error(self, ev: lw.ServerError, now: float) -> None:
        """An ``error``: logged; a refused start or a fatal code is the error state."""
        f = self.facts
        f.counters.server_errors += 1
        about = self.out.about(ev.client_event_id)
        where = f" (in reply to {about} {ev.client_event_id})" if about else ""
        param = f" [param {guard.printable(ev.param, 100)}]" if ev.param else ""
        code = ev.code or ev.type
        if code == "context_injection_incomplete":
            logger.info("server: %s%s", code, where)
            return
        logger.warning("server error %s: %s%s%s", guard.printable(code, 100),
                       guard.printable(ev.message), param, where)
        refused_start = (ev.client_event_id is not None
                         and ev.client_event_id == self._start_event
                         and f.phase == "starting")
        if ev.code in FATAL_ERRORS and f.phase == "open":
            logger.warning("the session goes on; not treated as fatal")
        elif ev.code in FATAL_ERRORS or refused_start:
            f.fatal = (f"the service refused the session: {guard.printable(code, 100)}"
                       + (": check the API key" if ev.code == "invalid_api_key" else ""))
            f.mic_on = False
            self.end_session("refused", now)

    # ------------------------------------------------------------------ phases

    def set_mic(self, on: bool, now: float) -> None:
        """The user (or a tool) switched the mic: a session opens, or it is (un)muted."""
        f = self.facts
        if on == f.mic_on:
            return
        f.mic_on = on
        logger.info("microphone %s", "on" if on else "off")
        if on:
            self.out.emit(MicOpened())
            if f.phase == "idle":
                self.open(now, "the user started talking")
            elif f.phase == "waiting":
                self.open(now, "the user pressed the button")
            elif f.phase in ("closing", "ended"):
                self.reopen = True
            elif f.phase == "open":
                self.out.send(lw.mute(self.out.eid(), False))
        elif f.phase == "open":
            self.out.send(lw.mute(self.out.eid(), True))

    def wanted(self, now: float) -> bool:
        """The conversation is active: a session lost now is worth a new one."""
        return now - self.facts.last_activity < self.facts.settings.quiet_close_s

    def _quiet(self, now: float) -> bool:
        return (now - self.facts.last_activity >= self.facts.settings.quiet_close_s
                and not self.track.speaking() and not self.delegations.busy())

    def _disconnect(self, why: str) -> None:
        self._disconnecting = True
        self.out.emit(Disconnect(why))

    def open(self, now: float, why: str) -> None:
        """Ask for a connection; ``session.start`` follows once it is up."""
        self.uplink.reset()
        self.facts.set_phase("connecting", now)
        self.out.emit(Reconnect(why))

    def _close(self, now: float) -> None:
        """Ask the server to end the session; the socket closes once it has."""
        self.out.send(lw.session_close(self.out.eid()))
        self.facts.set_phase("closing", now)

    def end_session(self, why: str, now: float) -> None:
        """Whatever the phase, no session is wanted any more."""
        f = self.facts
        if f.phase == "open":
            self._close(now)
        elif f.phase in ("connecting", "starting"):
            self._disconnect(why)
            self.session_over(None, now)
            f.set_phase("ended", now)
        elif f.phase == "waiting":
            f.set_phase("idle", now)

    def session_over(self, final_s: float | None, now: float) -> None:
        """The session ended (closed, dropped or given up): account, record, cancel."""
        f = self.facts
        if self._started_at is not None:
            estimate = max(self._usage_s or 0.0, now - self._started_at)
            self._billed_done_s += final_s if final_s is not None else estimate
            self._billed_reported_s += final_s if final_s is not None else (
                self._usage_s or 0.0)
        self._started_at = None
        self._usage_s = None
        f.server_muted = False
        self.track.session_over()
        self.records.close_open()
        self.delegations.session_over()
        self.records.flush()
        f.session_id = None
        f.expires_at = None
