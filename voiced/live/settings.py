"""What the GPT-Live core needs from the configuration, its limits, and its own effect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from voiced import wire

RATE: Final = wire.SAMPLE_RATE
END_WAIT_MS: Final = 8000
"""After ``end_conversation``, timeline to wait for the goodbye before ending anyway."""
START_TIMEOUT_S: Final = 15.0
"""A connection whose ``session.started`` has not come after this long is given up."""
FATAL_ERRORS: Final = frozenset({
    "invalid_api_key", "insufficient_quota", "account_deactivated",
    "billing_hard_limit_reached", "credit_balance_exhausted", "model_not_found",
    "invalid_model"})
"""Error codes a person must fix (LiveKit's list and the ones seen from the service)."""


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """What the Live core needs from the configuration (the wiring fills it)."""

    model: str = "gpt-live-1"
    voice: str = "marin"
    instructions: str = ""
    quiet_close_s: float = 30.0
    """Close the session this long after the last sign of conversation: speech either
    way (transcripts, the assistant's audio, the device's VAD), a press, a tool."""
    ack_delay_ms: int = 600
    """``delegation.acknowledgement_delay_ms``: a tool answering sooner pre-empts the
    model's "let me check"."""
    tools: tuple[wire.FunctionToolParam, ...] = ()
    """The tools delegations may reach (the Toolbox's declarations)."""
    tool_keywords: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Keywords per tool name, overriding the derived ones (voiced.live.intents)."""
    delegation_policy: bool = True
    """Append a "Delegation policy" naming the tools to the instructions (the model is
    told no tool list otherwise) with a ``Delegate:`` line of their keywords."""
    no_tool_reply: str = ("This device has no tool for that request. Tell the user you "
                          "cannot do that here.")
    """The commentary that answers a delegation no tool matches."""
    delegation_wait_ms: int = 1500
    """Timeline after a delegation's position to wait for the words it is about."""
    reseed_turns: int = 10
    reseed_max_chars: int = 16_000
    """Startup history of a new session: at most this many turns and characters."""
    prestart_ms: int = 2000
    """Mic audio kept while a session starts and sent once it has (0: dropped)."""
    half_duplex: bool = True
    """Send silence instead of the mic while the assistant speaks and ``echo_tail_ms``
    after, so it does not hear itself through the speaker (a voice cannot interrupt it
    then; the button can)."""
    echo_tail_ms: int = 300
    silence_rms: float = 20.0
    """Output below this RMS (16-bit samples) is silence (LiveKit: 0.0006 full scale)."""
    burst_tail_ms: int = 500
    """A burst ends after this much silent output (longer than the pauses in speech)."""
    interrupt_hold_ms: int = 1000
    """After a button interrupt, reply audio is dropped until the track has been silent
    this long: the model does not know it was stopped and may go on (longer than the
    pauses inside its speech; the user's voice makes it stop in any case)."""
    tell_model_on_interrupt: bool = True
    segment_quiet_ms: int = 2000
    close_wait_s: float = 5.0
    """After ``session.close``, wait this long for ``session.closed`` before closing."""
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 8.0
    max_transcript_bytes: int = 65_536
    safety_identifier: str | None = None


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the Live connection and do not reopen it (the session is over).

    New effect of this package: the Realtime core never closes its connection for good.
    The supervisor answers with :meth:`LiveConversation.on_connection_down` once closed.
    """

    reason: str
