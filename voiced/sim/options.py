"""How `voiced sim` behaves: its options and its faults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SimOptions:
    """How the simulator behaves."""

    require_key: str | None = None
    """Refuse a bearer that is not this key (error invalid_api_key, close 3000)."""
    max_session_s: float = 3600.0
    """Sessions end with session_expired then close 1001 after this long, on the
    simulator's clock (a test's :class:`~voiced.sim.clock.ManualClock` moves it)."""
    pace: float = 1.0
    """Reply audio is streamed at this multiple of real time."""
    reply: Callable[[str], str] = field(default=lambda heard: f"You said: {heard}")
    """The assistant's words, given the user's transcript (unless instructions say
    otherwise: a line ``Say: <words>`` in the session's or the response's instructions
    makes the simulated model say those words)."""
    user_transcript: Literal["late", "early"] = "late"
    """When a user turn's transcript arrives, relative to the response to that turn.
    "late" (upstream's usual order; the transcription model is slower than the reply):
    after the response's ``response.created`` and its first delta. "early": before its
    ``response.created``. Either way each order is always the same, never a race."""
    drop_mid_response: int = 0
    """Faults: abort the connection (no close frame) halfway through the next N replies."""
    stall_after_s: float | None = None
    """Faults: this long after a session starts (on the simulator's clock), stop reading
    and sending (no pongs either)."""
    malformed_every: int = 0
    """Faults: after every N events sent, also send a malformed frame."""
    unknown_every: int = 0
    """Faults: after every N events sent, also send an event of an unknown type."""
    transcription_failures: int = 0
    """Faults: the next N input transcriptions fail
    (``conversation.item.input_audio_transcription.failed``)."""
    expire_at_input_ms: tuple[float, ...] = ()
    """Faults: the n-th session (in connection order) expires once it has received this
    much input audio: an expiry at a chosen point of the user's words, whatever the
    machine's speed."""
    transcript: str | None = None
    """What the user is heard to say, whatever the audio (tests of tools and languages);
    None: the recogniser's transcript."""
    delegate_words: tuple[str, ...] = ()
    """GPT-Live: words that make the simulated model delegate when the user says one,
    besides those of a ``Delegate: a, b`` line in the session's instructions."""
    tool_arguments: dict[str, str] = field(default_factory=dict)
    """The JSON arguments the simulated model passes to a tool, by name; a tool not
    named here gets arguments made to satisfy its declared schema."""
