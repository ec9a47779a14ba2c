"""What the parts of the Live core share: the facts, the counters and the effect list.

Each part (:mod:`~voiced.live.uplink`, :mod:`~voiced.live.track`,
:mod:`~voiced.live.records`, :mod:`~voiced.live.delegation`, :mod:`~voiced.live.session`)
owns its own ledger; what more than one of them reads or changes lives here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from voiced import wire
from voiced.core.effects import Send
from voiced.live import wire as lw
from voiced.live.settings import RATE, LiveSettings

_SENT_MEMORY: Final = 256  # client events remembered to explain an `error` event

Phase = Literal["idle", "connecting", "starting", "open", "closing", "ended", "waiting"]
"""idle: no session; connecting: Reconnect asked, the socket is awaited; starting:
``session.start`` sent; open; closing: ``session.close`` sent; ended: the session is over
(``session.closed``), its socket closing; waiting: lost, a new session after a backoff."""


@dataclass(slots=True)
class Counters:
    """What the Live core counts (``voiced ctl status`` shows some of them)."""

    audio_sent_ms: float = 0.0
    silence_sent_ms: float = 0.0
    interruptions: int = 0
    server_errors: int = 0
    tool_calls: int = 0
    delegations_unmatched: int = 0
    output_dropped: int = 0
    underruns: int = 0
    playback_overflows: int = 0
    prestart_dropped: int = 0
    sessions: int = 0
    reconnects: int = 0


@dataclass(slots=True)
class LiveFacts:
    """The shared facts of one Live conversation (mutable; owned by the conversation)."""

    settings: LiveSettings
    conversation_id: str
    """The id transcripts carry until a long press starts a new one."""
    model: str
    """The model of the current session (the server's word once started)."""
    clock: float = 0.0
    """The ``now`` (monotonic seconds) of the latest input that gave one."""
    phase: Phase = "idle"
    phase_at: float = 0.0
    """When the phase last changed (start timeout, close wait)."""
    session_no: int = 0
    """Sessions started: bursts and cuts belong to one."""
    session_id: str | None = None
    expires_at: float | None = None
    fatal: str | None = None
    device_fault: str | None = None
    mic_on: bool = False
    server_muted: bool = False
    queued: bool = False
    """Reply audio handed to the sink and not yet drained."""
    mute_until: float = 0.0
    """Half duplex: the mic sends silence until then (the echo tail after playback)."""
    last_activity: float = -math.inf
    """The last sign of conversation (the quiet close and the reconnect rule)."""
    timeline: int = 0
    """Samples sent in this session: the session's clock."""
    end_at: int | None = None
    """``end_conversation``: the timeline position (ms) it was asked at."""
    end_spoke: bool = False
    """The assistant has spoken (the goodbye) since ``end_at``."""
    counters: Counters = field(default_factory=Counters)

    def timeline_ms(self) -> int:
        """The timeline in milliseconds."""
        return self.timeline * 1000 // RATE

    def set_phase(self, phase: Phase, now: float) -> None:
        """Move the session to ``phase``."""
        self.phase = phase
        self.phase_at = now


class Out:
    """Collects effects until the supervisor takes them; numbers the client events.

    :class:`voiced.core.emitter.Emitter`'s counterpart for Live events (their summary is
    ``live.wire.describe``, an audio append carries no id, and :class:`Disconnect` is
    one of the effects).
    """

    def __init__(self) -> None:
        self._effects: list[Any] = []
        self._seq = 0
        self._sent: OrderedDict[str, str] = OrderedDict()

    def emit(self, effect: Any) -> None:
        """Append one effect."""
        self._effects.append(effect)

    def eid(self) -> str:
        """A fresh client ``event_id``."""
        self._seq += 1
        return f"voiced_{self._seq}"

    def send(self, event: lw.ClientEvent) -> None:
        """Emit :class:`Send`, remembering what the event was (bounded)."""
        eid = event.get("event_id")
        if isinstance(eid, str):
            self._sent[eid] = lw.describe(event)
            if len(self._sent) > _SENT_MEMORY:
                self._sent.popitem(last=False)
        # Send names the Realtime union; the supervisor encodes any event the same way
        self.emit(Send(cast(wire.ClientEvent, event)))

    def about(self, event_id: str | None) -> str:
        """What the client event ``event_id`` was (for an ``error`` naming it), or ""."""
        return self._sent.get(event_id or "", "")

    def take(self) -> list[Any]:
        """Return the effects produced since the last call, and forget them."""
        effects, self._effects = self._effects, []
        return effects
