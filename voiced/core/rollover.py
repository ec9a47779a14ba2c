"""Make-before-break rollover: the standby session, prepared before the live one expires.

Sessions end after 60 minutes. Inside ``Policy.rollover_margin_s`` of ``expires_at`` a
standby session is opened, configured and re-seeded with the recent turns while the live
one goes on; the conversation switches to it at a quiet moment (forced in the last fifth
of the margin), so the user never hears the expiry. A standby that fails is tried again
after :data:`RETRY_S`.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

from voiced import guard, wire
from voiced.core.effects import CloseStandby, OpenStandby, SwitchToStandby
from voiced.core.emitter import Emitter
from voiced.core.facts import Facts
from voiced.core.history import History
from voiced.core.setup import Setup

logger = logging.getLogger("voiced.core")

RETRY_S: Final = 10.0  # a standby session that failed is tried again after this
_PAST_EXPIRY_S: Final = 86_400.0  # an expires_at further in the past is not believed
FATAL_ERRORS: Final = frozenset({"invalid_api_key", "beta_api_shape_disabled",
                                 "invalid_model", "missing_model"})

Progress = Literal["opening", "configuring", "ready"]


class Rollover:
    """The live session's expiry and the standby session being prepared."""

    def __init__(self, facts: Facts, out: Emitter, history: History) -> None:
        self.facts = facts
        self.out = out
        self.history = history
        self.expires_at: float | None = None
        self.standby: Progress | None = None
        self.retry_at = 0.0  # no standby is opened before this (after a failure)
        self.wall: float | None = None  # the last wall time a tick gave
        self._standby_expires: float | None = None
        self._setup = Setup()  # the standby's
        self._seeded = 0  # History.count when the standby was re-seeded

    def tick(self, now: float) -> bool:
        """Open a standby inside the margin; True when a ready one may be switched to."""
        if self.expires_at is None or self.wall is None or not self.facts.configured:
            return False
        left = self.expires_at - self.wall
        if left > self.facts.policy.rollover_margin_s:
            return False
        if self.standby is None and now >= self.retry_at:
            logger.info("session expires in %.0f s: preparing the next session", left)
            self.standby = "opening"
            self.out.emit(OpenStandby())
            return False
        return self.standby == "ready"

    def switch_due(self, busy: bool) -> bool:
        """Whether to switch now: at a quiet moment, or mid-turn in the margin's last fifth."""
        if self.wall is None or self.expires_at is None:
            return False
        left = self.expires_at - self.wall
        if busy and left > self.facts.policy.rollover_margin_s / 5:
            return False  # wait for a quiet moment
        logger.info("moving to the next session%s (%.0f s before expiry)",
                    " now, mid-turn: no quiet moment came" if busy else "", left)
        return True

    def on_up(self) -> None:
        """The standby connection is open; its ``session.created`` is awaited."""
        if self.standby == "opening":
            self.standby = "configuring"
            self._setup.begin(self.facts.policy)

    def on_down(self, reason: str, now: float) -> None:
        """The standby connection failed or closed before the switch; retried later."""
        if self.standby is None:
            return
        logger.warning("the next session could not be prepared (%s); trying again in %g s",
                       reason, RETRY_S)
        self.standby = None
        self.retry_at = now + RETRY_S

    def on_event(self, ev: wire.ServerEvent, now: float) -> bool:
        """An event on the standby connection; True when it has just become ready."""
        if self.standby is None:
            return False
        match ev:
            case wire.SessionCreated():
                self._standby_expires = self.plausible_expiry(ev.expires_at)
                self._setup.on_created(ev, self.facts.policy, self.out, standby=True)
                for role, text in self.history:
                    self.out.send(wire.text_item(self.out.eid(), role, text), standby=True)
                self._seeded = self.history.count
            case wire.SessionUpdated() | wire.BufferCleared():
                done = (self._setup.on_updated(ev) if isinstance(ev, wire.SessionUpdated)
                        else self._setup.on_cleared())
                if done and self.standby != "ready":
                    self.standby = "ready"
                    logger.info("next session ready (%d turn(s) of context)",
                                len(self.history))
                    return True
            case wire.ServerError():
                if self._setup.on_error(ev) and self.standby != "ready":
                    self.standby = "ready"  # a relay refused the fence: the set-up is over
                    return True
                self.facts.counters.server_errors += 1
                logger.warning("next session: server error %s: %s",
                               guard.printable(ev.code or ev.type, 100),
                               guard.printable(ev.message))
                if ev.code in FATAL_ERRORS:
                    self.out.emit(CloseStandby(f"refused: {ev.code}"))
                    self.on_down(f"refused: {ev.code}", now)
            case _:
                logger.debug("next session: %s",
                             guard.printable(getattr(ev, "type", type(ev).__name__), 100))
        return False

    def switch(self) -> None:
        """The standby becomes the live session; it gets the turns it missed."""
        self.out.emit(SwitchToStandby())
        self.standby = None
        self.expires_at = self._standby_expires
        self.facts.session_model = self._setup.model
        # turns that ended while the standby was being prepared
        for role, text in self.history.since(self._seeded):
            self.out.send(wire.text_item(self.out.eid(), role, text))

    def close(self, reason: str) -> None:
        """Give up the standby (the live session ended)."""
        if self.standby is not None:
            self.standby = None
            self.out.emit(CloseStandby(reason))

    def plausible_expiry(self, expires_at: float | None) -> float | None:
        """``expires_at``, unless it lies more than a day before the wall clock.

        Such a session would be replaced the moment it is created, and so would the
        next one, for good (a relay with a stale constant, a server with a broken
        clock). Its end is noticed when the server ends it instead. Smaller differences
        are honoured: a device clock that is off is no reason to miss an expiry.
        """
        if expires_at is None or self.wall is None or expires_at > self.wall - _PAST_EXPIRY_S:
            return expires_at
        if guard.should_log("session:expiry") is not None:
            logger.warning("the session's expires_at is %.0f s in the past by this device's "
                           "clock; ignoring it", self.wall - expires_at)
        return None
