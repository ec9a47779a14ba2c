"""What the core asks the world to do: the effect types, and the state it shows.

An input to a core (the GA conversation in :mod:`voiced.core.conversation`, or another
backend protocol's) returns nothing; it appends effects, which the supervisor drains and
applies in order. The types are shared by every core, so the supervisor, the audio, the
orb and the outbox never learn which backend protocol is in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from voiced import wire
from voiced.transcripts import Transcript


class State(StrEnum):
    """What the device is doing, as `voiced ctl status` and the orb show it."""

    STARTING = "starting"
    CONNECTING = "connecting"
    READY = "ready"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Send:
    """Send this client event on the Realtime connection."""

    event: wire.ClientEvent
    standby: bool = False
    """To the standby session being prepared for a rollover, not the live one."""


@dataclass(frozen=True, slots=True)
class Play:
    """Queue reply audio (PCM16 24 kHz mono) for playback, tagged with its item."""

    pcm: bytes
    item_id: str


@dataclass(frozen=True, slots=True)
class StopPlayback:
    """Drop queued audio at once; answer with :meth:`Conversation.on_playback_stopped`."""


@dataclass(frozen=True, slots=True)
class ShowState:
    """The derived state changed (``detail`` is a few words for STATUS= and logs)."""

    state: State
    detail: str


@dataclass(frozen=True, slots=True)
class Record:
    """Hand a transcript to the transcript pipeline."""

    transcript: Transcript


@dataclass(frozen=True, slots=True)
class Draft:
    """Keep an assistant transcript durably while its audio still plays.

    The record proper (with ``interrupted`` and ``heard_ms``) comes when playback ends;
    if the device dies before that, the draft is what survives.
    """

    transcript: Transcript


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Close the current Realtime connection and open a fresh session."""

    reason: str


@dataclass(frozen=True, slots=True)
class MicOpened:
    """The user switched the mic on (the file backend starts its WAV here)."""


@dataclass(frozen=True, slots=True)
class CallTool:
    """Run a tool the model called; answer with :meth:`Conversation.on_tool_result`."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class CancelTool:
    """Stop a running tool call (the user interrupted, or the session ended)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class OpenStandby:
    """Open a second connection, the standby session a rollover will move to.

    Its events come back through :meth:`Conversation.on_standby_event`, its fate
    through :meth:`Conversation.on_standby_up` / :meth:`Conversation.on_standby_down`.
    """


@dataclass(frozen=True, slots=True)
class SwitchToStandby:
    """Make the standby the live connection (sends after this go to it); close the old."""


@dataclass(frozen=True, slots=True)
class CloseStandby:
    """Close the standby connection, if there is one."""

    reason: str


Effect = (Send | Play | StopPlayback | ShowState | Record | Draft | Reconnect | MicOpened
          | CallTool | CancelTool | OpenStandby | SwitchToStandby | CloseStandby)
