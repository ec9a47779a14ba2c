"""One session's set-up: the device's ``session.update``, and the answer that counts.

Directly against OpenAI nobody else updates the session, so the first
``session.updated`` answers the device's update. Behind a relay that is not so: a relay
like the seed's sends its own ``session.update`` when it connects upstream and forwards
every answer, and its ``session.updated`` may reach the device after the device sent its
own (a relay may even hold the device's update a while). A GA ``session.updated`` echoes
no client ``event_id`` (only ``error`` does), and its content cannot tell the two apart
(the relay may set exactly what the device sets).

So behind a relay the device's update is followed by a fence: ``input_audio_buffer.clear``
(harmless: nothing is appended before the session is configured), answered by
``input_audio_buffer.cleared``. A server handles one connection's events in order, and a
relay forwards them in order, so the session is configured once the fence's answer
arrives: every ``session.updated`` before it, the last of them answering the device's own
update, has been seen. The model a session reports (``session.created`` and each
``session.updated``) is kept for the records.
"""

from __future__ import annotations

import logging
from typing import Final

from voiced import wire
from voiced.core.emitter import Emitter
from voiced.core.policy import Policy, session_update

logger = logging.getLogger("voiced.core")

# behind a relay, before session.created: no session.updated completes the set-up yet
_NOT_SENT: Final = "(the device's session.update is not sent yet)"


class Setup:
    """The set-up of one session (the live one, or the standby during a rollover)."""

    def __init__(self) -> None:
        self.fence: str | None = None
        """The event id of the ``input_audio_buffer.clear`` still unanswered."""
        self.updated: dict[str, object] | None = None
        """The latest effective configuration a ``session.updated`` reported."""
        self.model: str | None = None
        """The model the session reports, once it has named one."""

    def begin(self, policy: Policy) -> None:
        """A new connection: its session.created is awaited."""
        self.updated = None
        self.model = None
        self.fence = _NOT_SENT if policy.behind_relay else None

    def on_created(self, ev: wire.SessionCreated, policy: Policy, out: Emitter, *,
                   standby: bool = False) -> None:
        """A new session: send the device's update (and, behind a relay, the fence)."""
        self.updated = None
        self.model = ev.model
        out.send(session_update(policy, out.eid()), standby=standby)
        self.fence = None
        if policy.behind_relay:
            self.fence = out.eid()
            out.send({"type": "input_audio_buffer.clear", "event_id": self.fence},
                     standby=standby)

    def on_updated(self, ev: wire.SessionUpdated) -> bool:
        """A ``session.updated``; True when it completes the set-up (no fence pending)."""
        self.updated = ev.session
        self.model = ev.model or self.model
        return self.fence is None

    @property
    def waits_for_fence(self) -> bool:
        """The session answers (a session.updated came), but the fence has not yet."""
        return self.fence not in (None, _NOT_SENT) and self.updated is not None

    def on_error(self, ev: wire.ServerError) -> bool:
        """An ``error``; True when it names the fence (a relay that refuses the clear)."""
        if self.fence is None or ev.event_id != self.fence:
            return False
        return self.on_cleared()

    def on_cleared(self) -> bool:
        """``input_audio_buffer.cleared``; True when it answers the fence."""
        if self.fence is None or self.fence is _NOT_SENT:
            return False  # a clear of a turn too short to send, or not ours
        self.fence = None
        if self.updated is None:
            logger.warning("no session.updated answered the device's session.update; "
                           "going on with the session as the relay set it")
        return True
