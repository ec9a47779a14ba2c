"""What the parts of the conversation share: the facts the state is derived from.

Each part (replies, uplink, calls, rollover) owns its own ledger; what more than one of
them reads or changes lives here, in one place the conversation derives its state from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voiced.core.filing import Filing
from voiced.core.policy import Policy


@dataclass(slots=True)
class Counters:
    """What the core counts (``voiced ctl status`` shows some of them)."""

    appended_samples: int = 0
    frames_muted: int = 0
    deltas_dropped: int = 0
    server_errors: int = 0
    interruptions: int = 0
    backlog_dropped: int = 0  # mic frames dropped from the replay backlog (long outage)
    underruns: int = 0  # playback ran dry while the reply was still streaming
    tool_calls: int = 0
    tool_calls_cancelled: int = 0
    vad_samples_held_back: int = 0  # client VAD: mic samples not sent (silence)
    vad_turns: int = 0  # client VAD: turns committed
    playback_overflows: int = 0  # reply audio the sink refused (more than it may hold)
    items_pruned: int = 0  # assistant items closed by the bound or for silence
    transcripts_cut: int = 0  # transcripts cut at max_transcript_bytes


@dataclass(slots=True)
class Facts:
    """The shared facts of one conversation (mutable; owned by the conversation)."""

    policy: Policy
    filing: Filing
    """The conversations' ids; every transcript is filed through it."""
    session_model: str | None = None
    """The model the live session reports (behind a relay, the relay's choice)."""
    configured: bool = False
    """A Realtime session is live and configured (session.updated came)."""
    session_no: int = 0
    """Counts sessions: items of an earlier one are not the current one's to cut."""
    clock: float = 0.0
    """The ``now`` (monotonic seconds) of the latest input that gave one."""
    awaiting_reply: bool = False
    """A turn ended (or a tool answered) and the reply has not started yet."""
    active_response: str | None = None
    """The response the server is making (upstream allows one at a time)."""
    reply_wanted: bool = False
    """A committed turn waits for the active response to end before asking for a reply."""
    queued: bool = False
    """Reply audio handed to the sink and not yet drained."""
    mute_until: float = 0.0
    """Half duplex: the mic stays muted until then (the echo tail after playback)."""
    counters: Counters = field(default_factory=Counters)

    @property
    def model(self) -> str:
        """The model records name: the session's, else the configured one."""
        return self.session_model or self.policy.model
