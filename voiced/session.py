"""The conversation core: a sans-I/O state machine.

Inputs are ``on_*`` calls (button gestures, mic frames, server events, playback reports,
connection changes), each given the current monotonic time; outputs are effects drained
with :meth:`Conversation.take_effects`, which returns and clears them, like websockets'
``data_to_send()``. Nothing here awaits, sleeps, reads a clock, or touches a socket, a
device or a file, so every behaviour is tested synchronously.

The state shown to people (contract §3) is *derived* from a few facts after every input,
never stored, so it cannot drift from them:

    error > starting > connecting > speaking > thinking > listening > ready

Everything a server event can make the core hold is bounded (docs/architecture.md,
"Hostile input"): assistant items (``Policy.max_pending_items``, the oldest pruned and
recorded with the words they have), each item's transcript in UTF-8 bytes
(``Policy.max_transcript_bytes``), discarded responses, running tool calls; items of a
session that ended, or silent for a minute, are closed; a reply that runs further ahead
of playback than the sink holds is cancelled (:meth:`Conversation.on_playback_full`).
Text that reaches a record or the history is valid Unicode.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal

from voiced import guard, wire
from voiced.speech_gate import ClientVad, SpeechGate

logger = logging.getLogger(__name__)

_COMPACT_DELTAS: Final = 64  # transcript deltas are joined into one string past this
_MAX_UNTRANSCRIBED: Final = 16  # committed turns awaiting their transcription
_SENT_MEMORY: Final = 256  # client events remembered to explain an `error` event
_MIN_COMMIT_SAMPLES: Final = wire.SAMPLE_RATE // 10  # the API refuses commits under 100 ms
# user speech kept until the server commits it, to replay into a new session after a
# drop; bounded so a long outage with the mic on cannot grow memory
_BACKLOG_SAMPLES: Final = wire.SAMPLE_RATE * 15
_STANDBY_RETRY_S: Final = 10.0  # a standby session that failed is tried again after this
# at a rollover at a quiet moment, the newest mic audio is replayed into the new session
# too: the user may have begun a word the old session's VAD had not yet noticed
_ONSET_SAMPLES: Final = wire.SAMPLE_RATE // 2
_CANCELLED: Final = '{"error": "cancelled: the user interrupted before it finished"}'
_QUIET_ERRORS: Final = frozenset({"response_cancel_not_active"})
_FATAL_ERRORS: Final = frozenset({"invalid_api_key", "beta_api_shape_disabled",
                                  "invalid_model", "missing_model"})
_MAX_DISCARDED: Final = 256  # interrupted responses whose late events are dropped
_MAX_CALLS: Final = 16  # tool calls running at once; more are answered with an error
_TOO_MANY_CALLS: Final = '{"error": "too many tool calls at once; try fewer"}'
# an unfinished item with no event for this long, and nothing left to play, is over
# (its response.done was lost): without this it would show `speaking` for good
_ITEM_STALE_S: Final = 60.0
_LOG_TEXT: Final = 1000  # characters of a transcript shown in a log line
_PAST_EXPIRY_S: Final = 86_400.0  # an expires_at further in the past is not believed


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
class Policy:
    """The parts of the configuration the conversation logic depends on."""

    model: str
    voice: str
    instructions: str
    turn_detection: wire.TurnDetectionParam | None
    """None: push to talk / manual turns (the client commits and asks for a response)."""
    transcription: wire.TranscriptionParam
    half_duplex: bool = True
    """Mute the mic while the speaker plays, and for ``echo_tail_ms`` after."""
    echo_tail_ms: int = 300
    send_model: bool = True
    """False behind a relay, which chooses the model itself."""
    reseed_turns: int = 10
    """Earlier turns given to a new session of the same conversation as context."""
    rollover_margin_s: float = 300.0
    """Move to a new session this long before the current one expires (at a quiet
    moment; forced in the last fifth of the margin)."""
    tools: tuple[wire.FunctionToolParam, ...] = ()
    """Functions the model may call (declared in session.update)."""
    client_vad: ClientVad | None = None
    """On-device turn detection: send only speech, commit and ask for replies ourselves."""
    max_transcript_bytes: int = 65_536
    """UTF-8 bytes of one transcript kept (deltas and finals; an hour of speech is less)."""
    max_pending_items: int = 64
    """Assistant items held at once; the oldest is closed (and recorded) beyond this."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """One user or assistant utterance, to become a transcript record."""

    role: str
    text: str
    item_id: str
    conversation_id: str
    metadata: dict[str, Any]


# ------------------------------------------------------------------------- effects


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


@dataclass(slots=True)
class _Item:
    """Playback bookkeeping for one assistant audio item."""

    response_id: str
    conversation_id: str  # fixed when the item appears: a long press must not re-file it
    content_index: int = 0
    received: int = 0  # samples received from the server
    played: int | None = None  # samples the device consumed, once known
    audio_done: bool = False
    finished: bool = False
    interrupted: bool = False
    transcript: str | None = None
    partial: list[str] = field(default_factory=list)  # transcript deltas, until the .done
    partial_bytes: int = 0  # their UTF-8 size, bounded by Policy.max_transcript_bytes
    response_over: bool = False  # its response is done (or its session gone)
    session: int = 0  # which Realtime session made it (the core's count)
    recorded: bool = False
    drafted: bool = False
    overflowed: bool = False  # ran further ahead of playback than the sink holds
    last_event: float = 0.0  # when a server event last touched it


@dataclass(slots=True)
class _Counters:
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
class _Call:
    """A tool call in flight, until its answer has been asked for."""

    response_id: str
    name: str
    output: str | None = None


class Conversation:
    """The voice conversation, as a pure state machine.

    Args:
        policy: behaviour switches from the configuration.
        conversation_id: the id transcripts carry until a long press starts a new one.
        new_id: makes a fresh conversation id (a UUID in production, a counter in tests).
    """

    def __init__(self, policy: Policy, *, conversation_id: str,
                 new_id: Callable[[], str]) -> None:
        self.policy = policy
        self.conversation_id = conversation_id
        self._new_id = new_id
        self._effects: list[Effect] = []
        self._state = State.STARTING
        self._detail = "devices opening"
        # facts the state is derived from
        self._devices_ready = False
        self._fatal: str | None = None
        self._device_fault: str | None = None
        self._connected = False
        self._configured = False
        self._mic_on = False
        self._awaiting_reply = False
        self._queued = False  # audio handed to the sink and not yet drained
        self._conn_detail = "not connected"
        # protocol bookkeeping
        self._event_seq = 0
        self._sent: OrderedDict[str, str] = OrderedDict()
        self._active_response: str | None = None
        self._discarded: OrderedDict[str, None] = OrderedDict()
        self._items: dict[str, _Item] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # items forgotten, newest last
        self._clock = 0.0  # the `now` of the latest input that gave one
        # the conversation so far, as text, to re-seed a new session (expiry, reconnect)
        self._history: deque[tuple[Literal["user", "assistant"], str]] = deque()
        self._speech_active = False
        self._uncommitted = 0  # samples appended since the last commit/clear
        self._backlog: deque[bytes] = deque()  # those frames (and any not yet sent)
        self._backlog_samples = 0
        self._mute_until = 0.0
        self.expires_at: float | None = None
        # make-before-break rollover: None, "opening", "configuring" or "ready"
        self._standby: str | None = None
        self._standby_expires: float | None = None
        self._standby_seeded = 0  # self._turns when the standby was re-seeded
        self._standby_retry_at = 0.0
        self._turns = 0  # turns remembered so far, to re-seed what a standby missed
        self._wall: float | None = None  # the last wall time on_tick gave
        # tool calls
        self._calls: dict[str, _Call] = {}
        self._calls_seen: OrderedDict[str, None] = OrderedDict()  # dedupe by call_id
        self._end_pending = False  # end the conversation once the reply has been heard
        self._reply_wanted = False  # a committed turn waits for the active response to end
        # committed user turns whose transcription has not come yet (it may come after the
        # reply): a rollover waits for them, or the old session would take them along
        self._untranscribed: OrderedDict[str, None] = OrderedDict()
        self._session_no = 0  # counts sessions: items of an earlier one are not its to cut
        self._gate = SpeechGate(policy.client_vad) if policy.client_vad else None
        self.counters = _Counters()

    # ------------------------------------------------------------------ public reads

    @property
    def state(self) -> State:
        """The current derived state."""
        return self._state

    @property
    def mic_on(self) -> bool:
        """Whether the user has the microphone switched on."""
        return self._mic_on

    @property
    def fatal_reason(self) -> str | None:
        """Why the device is in the error state, or None."""
        return self._fatal

    @property
    def connected(self) -> bool:
        """Whether a configured Realtime session is live."""
        return self._configured

    def status(self) -> dict[str, Any]:
        """The contract's status fields this core knows (the supervisor adds the rest)."""
        return {
            "state": str(self._state),
            "detail": self._detail,
            "mic": "on" if self._mic_on else "off",
            "connected": self._configured,
            "conversation_id": self.conversation_id,
            "session_expires_at": self.expires_at,
            "audio_sent_ms": round(self.counters.appended_samples * 1000 / wire.SAMPLE_RATE),
            "interruptions": self.counters.interruptions,
            "server_errors": self.counters.server_errors,
            "playback_underruns": self.counters.underruns,
            "tool_calls": self.counters.tool_calls,
            "pending_items": len(self._items),
            "transcript_bytes": self.transcript_bytes(),
            "playback_overflows": self.counters.playback_overflows,
        }

    def transcript_bytes(self) -> int:
        """UTF-8 bytes of assistant transcript text held (partial and whole)."""
        return sum(it.partial_bytes + (wire.utf8_len(it.transcript) if it.transcript else 0)
                   for it in self._items.values())

    def take_effects(self) -> list[Effect]:
        """Return the effects produced since the last call, and forget them."""
        effects, self._effects = self._effects, []
        return effects

    # ---------------------------------------------------------------- lifecycle inputs

    def set_policy(self, policy: Policy) -> None:
        """New settings (SIGHUP); session-level ones apply from the next session."""
        if policy.client_vad is None and self._vad_talking:
            self._vad_end_turn()  # client VAD switched off mid-turn: end the turn
        if policy.client_vad is None:
            self._gate = None
        elif self._gate is None:
            self._gate = SpeechGate(policy.client_vad)
        else:
            self._gate.vad = policy.client_vad  # a turn in progress carries on
        self.policy = policy
        self._update()

    def on_devices_ready(self) -> None:
        """The mic and speaker are open."""
        self._devices_ready = True
        self._update()

    def on_fatal(self, reason: str) -> None:
        """Something only a person can fix (bad key, device gone for good)."""
        self._fatal = reason
        self._update()

    def on_fatal_cleared(self) -> None:
        """The fatal condition went away (e.g. a retry after a key change worked)."""
        self._fatal = None
        self._update()

    def on_device_fault(self, reason: str) -> None:
        """The mic or speaker failed (unplugged, I/O error); the supervisor is retrying."""
        self._device_fault = reason
        self._update()

    def on_device_restored(self) -> None:
        """The failed device is open again."""
        self._device_fault = None
        self._update()

    def on_connection_up(self) -> None:
        """The WebSocket is open; ``session.created`` is awaited."""
        self._session_no += 1
        self._connected = True
        self._configured = False
        self._conn_detail = "waiting for session.created"
        self._update()

    def on_connection_down(self, reason: str) -> None:
        """The WebSocket closed or failed; ``reason`` is a few words for STATUS=.

        Queued reply audio keeps playing (it is already here); the response it belonged
        to is over, and its transcript is recorded when playback ends.
        """
        self._connected = False
        self._configured = False
        self._conn_detail = reason
        self._awaiting_reply = False
        self._speech_active = False
        self._uncommitted = 0
        self._leave_session("the session ended")
        self._close_every_response()
        self._discarded.clear()  # their late events cannot come on another connection
        if self._standby is not None:
            self._standby = None
            self._emit(CloseStandby("the live session ended"))
        self._update()

    def on_tick(self, now: float, wall: float) -> None:
        """About once a second; ``wall`` is epoch seconds, to compare with expires_at.

        Sessions end after 60 minutes. Inside the rollover margin a standby session is
        opened, configured and re-seeded with the recent turns while the live one goes
        on; at a moment when nobody is talking (forced in the last fifth of the margin)
        the conversation switches to it, so the user never hears the expiry.
        """
        self._wall = wall
        self._clock = now
        self._close_stale_items(now)
        if self.expires_at is None or not self._configured:
            return
        left = self.expires_at - wall
        if left > self.policy.rollover_margin_s:
            return
        if self._standby is None and now >= self._standby_retry_at:
            logger.info("session expires in %.0f s: preparing the next session", left)
            self._standby = "opening"
            self._emit(OpenStandby())
        elif self._standby == "ready":
            self._maybe_switch()

    # ------------------------------------------------------------- standby session

    @property
    def standby(self) -> str | None:
        """The standby session's progress: None, "opening", "configuring" or "ready"."""
        return self._standby

    def on_standby_up(self) -> None:
        """The standby connection is open; its ``session.created`` is awaited."""
        if self._standby == "opening":
            self._standby = "configuring"

    def on_standby_down(self, reason: str, now: float) -> None:
        """The standby connection failed or closed before the switch; retried later."""
        if self._standby is None:
            return
        logger.warning("the next session could not be prepared (%s); trying again in %g s",
                       reason, _STANDBY_RETRY_S)
        self._standby = None
        self._standby_retry_at = now + _STANDBY_RETRY_S

    def on_standby_event(self, ev: wire.ServerEvent, now: float) -> None:
        """An event on the standby connection: configure and re-seed it, then switch."""
        if self._standby is None:
            return
        match ev:
            case wire.SessionCreated():
                self._standby_expires = self._plausible_expiry(ev.expires_at)
                self._send(self._session_update(), standby=True)
                for role, text in self._history:
                    self._send(wire.text_item(self._eid(), role, text), standby=True)
                self._standby_seeded = self._turns
            case wire.SessionUpdated():
                if self._standby != "ready":
                    self._standby = "ready"
                    logger.info("next session ready (%d turn(s) of context)",
                                len(self._history))
                    self._maybe_switch()
            case wire.ServerError():
                self.counters.server_errors += 1
                logger.warning("next session: server error %s: %s",
                               guard.printable(ev.code or ev.type, 100),
                               guard.printable(ev.message))
                if ev.code in _FATAL_ERRORS:
                    self._emit(CloseStandby(f"refused: {ev.code}"))
                    self.on_standby_down(f"refused: {ev.code}", now)
            case _:
                logger.debug("next session: %s",
                             guard.printable(getattr(ev, "type", type(ev).__name__), 100))
        self._update()

    def _busy(self) -> bool:
        """Someone is talking, or a reply is on its way: not the moment to switch."""
        return (self._speaking() or self._awaiting_reply or self._user_mid_turn()
                or self._active_response is not None or bool(self._calls)
                or self._vad_talking or self._end_pending or bool(self._untranscribed))

    def _user_mid_turn(self) -> bool:
        """The user is saying something the server has not committed yet."""
        return self._speech_active or (self.policy.turn_detection is None
                                       and self._uncommitted > 0)

    def _maybe_switch(self) -> None:
        if self._wall is None or self.expires_at is None:
            return
        left = self.expires_at - self._wall
        busy = self._busy()
        if busy and left > self.policy.rollover_margin_s / 5:
            return  # wait for a quiet moment
        logger.info("moving to the next session%s (%.0f s before expiry)",
                    " now, mid-turn: no quiet moment came" if busy else "", left)
        self._switch()

    def _leave_session(self, why: str) -> None:
        """What was pending in this session goes with it.

        A new one cannot take a tool's answer, a reply to a turn it never got, or that
        turn's transcription.
        """
        self._cancel_calls(why)
        self._reply_wanted = False
        self._untranscribed.clear()

    def _switch(self) -> None:
        if self._untranscribed:  # forced: no quiet moment came
            logger.warning("moving on before %d user turn(s) were transcribed; their words "
                           "are not recorded", len(self._untranscribed))
        # a forced switch (quiet moment never came) cuts running calls: their outputs go
        # to the old session, the one that knows the call ids, before the switch
        self._leave_session("the session rolled over")
        self._session_no += 1
        self._emit(SwitchToStandby())
        self._standby = None
        self.expires_at = self._standby_expires
        # turns that ended while the standby was being prepared
        missed = min(self._turns - self._standby_seeded, len(self._history))
        for role, text in list(self._history)[len(self._history) - missed:]:
            self._send(wire.text_item(self._eid(), role, text))
        if self._active_response is not None:
            self._close_response(self._active_response)  # forced: the reply is cut
        self._awaiting_reply = False
        # the old session never committed this audio: the new one hears it again
        mid_turn = self._user_mid_turn()
        self._speech_active = False
        self._uncommitted = 0
        self._replay_backlog(None if mid_turn else _ONSET_SAMPLES)

    # -------------------------------------------------------------------- user inputs

    def on_press(self, now: float) -> None:
        """A short press (or `voiced ctl press`): toggle the mic, interrupting first."""
        if self._speaking() or self._tool_running():
            self._interrupt(cancel=True)
            self._set_mic(True)
        else:
            self._set_mic(not self._mic_on)
        self._update()

    def on_long_press(self, now: float) -> None:
        """End this conversation and start a fresh one (a new Realtime session)."""
        self._end_pending = False
        self._reply_wanted = False
        if self._speaking() or self._tool_running():
            self._interrupt(cancel=True)
        self._set_mic(False)
        # what is left of the old conversation closes with its connection (Reconnect);
        # until then its interrupted response stays discarded
        self.conversation_id = self._new_id()
        self._history.clear()
        self._forget_uncommitted()
        logger.info("starting a new conversation %s", self.conversation_id)
        self._emit(Reconnect("new conversation"))
        self._update()

    def on_interrupt(self, now: float) -> None:
        """`voiced ctl interrupt`: stop the assistant if it is speaking (or a tool runs)."""
        if self._speaking() or self._tool_running():
            self._interrupt(cancel=True)
            self._update()

    def on_talk_start(self, now: float) -> None:
        """Push to talk: the button went down."""
        if self._speaking():
            self._interrupt(cancel=True)
        self._set_mic(True)
        self._update()

    def on_talk_end(self, now: float) -> None:
        """Push to talk: the button came up; the turn ends (committed in manual mode)."""
        self._set_mic(False)
        self._update()

    def on_audio_captured(self, pcm: bytes, now: float, speech: bool = False) -> None:
        """A mic frame (PCM16 24 kHz mono): stream it when the mic is on.

        While the connection is down the frame is kept (bounded) and sent to the next
        session, so words spoken during a reconnect are not lost. ``speech`` is the
        on-device VAD's verdict on the frame (used only with client VAD).
        """
        if not self._mic_on:
            return
        if self.policy.half_duplex and (self._queued or now < self._mute_until):
            # NOTE: half duplex keeps the assistant from hearing itself through the speaker
            self.counters.frames_muted += 1
            return
        if self._gate is not None:
            self._vad_frame(pcm, speech, self._gate)
            self._update()
            return
        self._stream(pcm)

    def _stream(self, pcm: bytes) -> None:
        self._keep(pcm)
        if self._configured:
            self._append(pcm)

    @property
    def _vad_talking(self) -> bool:
        return self._gate is not None and self._gate.talking

    def _vad_frame(self, pcm: bytes, speech: bool, gate: SpeechGate) -> None:
        """Client VAD: send what the gate lets through; act on turns starting and ending."""
        gated = gate.feed(pcm, speech)
        self.counters.vad_samples_held_back += gated.held_back
        if gated.started:
            logger.info("speech detected on the device")
            if self._speaking():  # full duplex: the user talks over the reply
                logger.info("barge-in: user speech while speaking")
                self._interrupt(cancel=True)
            self._cancel_calls("the user spoke again")
        for frame in gated.send:
            self._stream(frame)
        if gated.ended:
            self._vad_end_turn()

    def _vad_end_turn(self) -> None:
        if self._gate is not None:
            self._gate.end_turn()
        if self._configured:
            self.counters.vad_turns += 1
            self._end_manual_turn()

    def _append(self, pcm: bytes) -> None:
        self._send(wire.audio_append(self._eid(), pcm))
        n = len(pcm) // wire.BYTES_PER_SAMPLE
        self.counters.appended_samples += n
        self._uncommitted += n

    def _keep(self, pcm: bytes) -> None:
        self._backlog.append(pcm)
        self._backlog_samples += len(pcm) // wire.BYTES_PER_SAMPLE
        while self._backlog_samples > _BACKLOG_SAMPLES:
            self._backlog_samples -= len(self._backlog.popleft()) // wire.BYTES_PER_SAMPLE
            self.counters.backlog_dropped += 1

    def _forget_uncommitted(self) -> None:
        self._uncommitted = 0
        self._backlog.clear()
        self._backlog_samples = 0

    def _replay_backlog(self, newest: int | None = None) -> None:
        """A new session: send it the user's speech the old one never committed.

        Args:
            newest: only about this many of the newest samples (None: all of them).
        """
        frames = list(self._backlog)
        if newest is not None:
            kept, total = [], 0
            for pcm in reversed(frames):
                if total >= newest:
                    break
                kept.append(pcm)
                total += len(pcm) // wire.BYTES_PER_SAMPLE
            frames = kept[::-1]
        if not frames:
            return
        logger.info("replaying %d ms of the user's speech into the new session",
                    sum(len(f) for f in frames) * 500 // wire.SAMPLE_RATE)
        for pcm in frames:
            self._append(pcm)
        ended = (not self._mic_on if self.policy.client_vad is None
                 else not self._vad_talking)
        if self.policy.turn_detection is None and ended:
            # push to talk was released, or the device VAD heard the turn end, while away
            self._end_manual_turn()

    # ------------------------------------------------------------------- tool inputs

    def on_tool_result(self, call_id: str, output: str, now: float) -> None:
        """A tool finished; ``output`` (JSON text, a result or an error) goes to the model.

        Once every call of the response has its output and no response is active, one
        ``response.create`` asks for the spoken answer.
        """
        call = self._calls.get(call_id)
        if call is None or call.output is not None:
            logger.debug("result for call %s nobody waits for (cancelled)", call_id)
            return
        call.output = output
        if self._configured:
            self._send(wire.function_output_item(self._eid(), call_id, output))
        self._maybe_answer()
        self._update()

    def mute_mic(self) -> None:
        """A tool switched the microphone off (the button switches it on again)."""
        self._set_mic(False)
        self._update()

    def end_conversation(self) -> None:
        """A tool ended the conversation: a new one starts once the reply was heard."""
        self._end_pending = True

    def _on_function_call(self, ev: wire.FunctionCallDone) -> None:
        if ev.call_id in self._calls_seen:
            return  # the same call, reported again by response.output_item.done
        self._calls_seen[ev.call_id] = None
        if len(self._calls_seen) > _SENT_MEMORY:
            self._calls_seen.popitem(last=False)
        if ev.response_id in self._discarded or not ev.complete:
            # the user interrupted the response that made this call (here, or the server
            # cancelled it on their speech, leaving the call incomplete): do not run it,
            # but answer it, so the conversation holds no call without an output
            logger.info("tool call %s from an interrupted response not run",
                        guard.printable(ev.name, 100))
            self._send(wire.function_output_item(self._eid(), ev.call_id, _CANCELLED))
            return
        if sum(c.output is None for c in self._calls.values()) >= _MAX_CALLS:
            if guard.should_log("session:too-many-calls") is not None:
                logger.warning("more than %d tool calls at once: %s answered with an error, "
                               "not run", _MAX_CALLS, guard.printable(ev.name, 100))
            self._send(wire.function_output_item(self._eid(), ev.call_id, _TOO_MANY_CALLS))
            return
        logger.info("tool call: %s", guard.printable(ev.name, 100))
        self.counters.tool_calls += 1
        self._calls[ev.call_id] = _Call(response_id=ev.response_id, name=ev.name)
        self._emit(CallTool(ev.call_id, ev.name, ev.arguments))

    def _tool_running(self) -> bool:
        return any(c.output is None for c in self._calls.values())

    def _maybe_answer(self) -> None:
        """Ask for the spoken answer when every call has its output and the air is free."""
        if not self._calls or self._tool_running() or self._active_response is not None:
            return
        self._calls.clear()
        if self._configured:
            self._send({"type": "response.create", "event_id": self._eid()})
            self._awaiting_reply = True

    def _cancel_calls(self, why: str) -> None:
        """Stop running tool calls; the model is told each was cancelled, not answered."""
        for call_id, call in self._calls.items():
            if call.output is None:
                logger.info("tool call %s cancelled: %s", call.name, why)
                self.counters.tool_calls_cancelled += 1
                self._emit(CancelTool(call_id))
                if self._configured:
                    self._send(wire.function_output_item(self._eid(), call_id, _CANCELLED))
        self._calls.clear()

    # ---------------------------------------------------------------- playback inputs

    def on_playback_stopped(self, now: float, played: Mapping[str, int]) -> None:
        """Answer to :class:`StopPlayback`: samples of each item the device really played.

        Sinks report only items that still had audio queued, so an item absent from
        ``played`` was heard in full. Sends the truncation that tells the server what
        the user actually heard.
        """
        self._queued = False
        self._mute_until = now + self.policy.echo_tail_ms / 1000
        # a copy: recording an item forgets it from self._items
        for item_id, item in list(self._items.items()):
            if item.finished or not item.interrupted:
                continue
            heard = min(played.get(item_id, item.received), item.received)
            item.played = heard
            item.finished = True
            # all received was heard, but more was still coming (playback had run dry):
            # the server holds audio and words past what we got, so it is told too
            if heard < item.received or not item.audio_done:
                self._truncate(item_id, item, heard)
            self._maybe_record(item_id, item)
        self._update()

    def on_playback_full(self, item_id: str, refused: int, now: float) -> None:
        """The sink refused ``refused`` samples of reply audio: it holds its maximum.

        The reply runs further ahead of playback than ``audio.max_queued_s`` (a server
        streaming without end, or far faster than real time). The rest of it is cancelled;
        what was queued plays out, and then the server is told where the user stopped
        hearing (truncate), as after an interruption, so the model knows.
        """
        self.counters.playback_overflows += 1
        item = self._items.get(item_id)
        if item is None:
            return
        item.received = max(0, item.received - refused)
        if item.overflowed:
            return
        if guard.should_log("session:overflow") is not None:
            logger.warning("reply audio is more than the speaker queue may hold ahead of "
                           "playback (audio.max_queued_s): the rest of the reply is "
                           "cancelled")
        item.overflowed = item.interrupted = True
        item.audio_done = True  # nothing more of it is taken: it ends when played out
        if not item.response_over:
            self._discard(item.response_id)
            if self._configured:
                self._send({"type": "response.cancel", "event_id": self._eid(),
                            "response_id": item.response_id})
        self._awaiting_reply = False
        self._update()

    def on_playback_drained(self, now: float) -> None:
        """Everything queued has been played (the device consumed it)."""
        if any(it.received and not it.audio_done for it in self._items.values()):
            self.counters.underruns += 1  # the network fell behind real time
        self._queued = False
        self._mute_until = now + self.policy.echo_tail_ms / 1000
        for item_id, item in list(self._items.items()):
            if item.audio_done and not item.finished:
                item.finished = True
                item.played = item.received
                if item.overflowed:  # the server holds more than was played: say so
                    self._truncate(item_id, item, item.received)
                self._maybe_record(item_id, item)
                if item.response_over and item.transcript is None:
                    self._forget(item_id)  # nothing will ever come for it
                    logger.info("assistant item %s ended with no transcript", item_id)
        self._update()

    # ------------------------------------------------------------------ server inputs

    def on_server_event(self, ev: wire.ServerEvent, now: float) -> None:
        """Act on one parsed server event."""
        self._clock = now
        match ev:
            case wire.AudioDelta():
                self._on_audio_delta(ev)
            case wire.SessionCreated():
                self.expires_at = self._plausible_expiry(ev.expires_at)
                self._conn_detail = "configuring session"
                self._send(self._session_update())
                if self._history:
                    logger.info("re-seeding the new session with %d earlier turn(s)",
                                len(self._history))
                for role, text in self._history:
                    self._send(wire.text_item(self._eid(), role, text))
            case wire.SessionUpdated():
                self._on_session_updated(ev)
            case wire.SpeechStarted():
                self._speech_active = True
                self._cancel_calls("the user spoke again")
                if self._speaking():
                    # the server heard the user over the reply; with interrupt_response it
                    # has cancelled the response itself, so only stop and truncate
                    logger.info("barge-in: user speech while speaking")
                    self._interrupt(cancel=False)
            case wire.SpeechStopped():
                self._speech_active = False
                self._awaiting_reply = True
            case wire.BufferCommitted():
                self._forget_uncommitted()
                self._untranscribed[ev.item_id] = None
                if len(self._untranscribed) > _MAX_UNTRANSCRIBED:
                    self._untranscribed.popitem(last=False)
            case wire.InputTranscriptionCompleted():
                self._untranscribed.pop(ev.item_id, None)
                self._on_user_transcript(ev)
            case wire.InputTranscriptionFailed():
                self._untranscribed.pop(ev.item_id, None)
                logger.warning("transcription of the user's words failed (item %s): %s",
                               guard.printable(ev.item_id, 100), guard.printable(ev.message))
            case wire.ResponseCreated():
                self._active_response = ev.response_id
                self._awaiting_reply = True
            case wire.ResponseDone():
                self._on_response_done(ev)
            case wire.AudioDone():
                self._on_audio_done(ev)
            case wire.AudioTranscriptDone() | wire.AudioTranscriptDelta() \
                    if ev.item_id in self._finished:
                # words for an item already recorded or given up: a new item for them
                # would leave a draft that nothing ever replaces
                logger.debug("late transcript for %s dropped", guard.printable(ev.item_id, 100))
            case wire.AudioTranscriptDone():
                item = self._item(ev.item_id, ev.response_id)
                item.transcript = self._bounded(ev.transcript)
                item.partial.clear()
                item.partial_bytes = 0
                self._maybe_record(ev.item_id, item)
            case wire.AudioTranscriptDelta():
                self._add_words(self._item(ev.item_id, ev.response_id), ev.delta)
            case wire.FunctionCallDone():
                self._on_function_call(ev)
            case wire.ItemTruncated():
                logger.debug("server truncated %s at %d ms", guard.printable(ev.item_id, 100),
                             ev.audio_end_ms)
            case wire.ServerError():
                self._on_error(ev)
            case wire.RelayConversationCreated():
                logger.info("relay created conversation %s",
                            guard.printable(ev.conversation_id, 100))
                self.conversation_id = ev.conversation_id
            case _:  # wire.Unhandled, the only type left
                logger.debug("ignoring server event %s", guard.printable(ev.type, 100))
        self._update()

    # ------------------------------------------------------------------ internals

    def _emit(self, effect: Effect) -> None:
        self._effects.append(effect)

    def _eid(self) -> str:
        self._event_seq += 1
        return f"voiced_{self._event_seq}"

    def _remember(self, role: Literal["user", "assistant"], text: str) -> None:
        self._turns += 1
        # valid text only: one lone surrogate here made every re-seed fail to encode
        self._history.append((role, wire.valid_text(text)))
        while len(self._history) > self.policy.reseed_turns:
            self._history.popleft()

    def _send(self, event: wire.ClientEvent, *, standby: bool = False) -> None:
        self._sent[event["event_id"]] = wire.describe(event)
        if len(self._sent) > _SENT_MEMORY:
            self._sent.popitem(last=False)
        self._emit(Send(event, standby))

    def _set_mic(self, on: bool) -> None:
        if on == self._mic_on:
            return
        self._mic_on = on
        logger.info("microphone %s", "on" if on else "off")
        if on:
            self._emit(MicOpened())
            return
        if self._gate is not None:
            self._gate.reset()
        if not self._configured:
            return  # what was said is in the backlog, for the next session
        if self.policy.turn_detection is None:
            self._end_manual_turn()
        elif self._speech_active:
            # the user switched off mid-sentence: drop the half utterance
            self._send({"type": "input_audio_buffer.clear", "event_id": self._eid()})
            self._speech_active = False
            self._forget_uncommitted()

    def _end_manual_turn(self) -> None:
        """Manual turns: switching the mic off commits the turn and asks for a reply."""
        if self._uncommitted >= _MIN_COMMIT_SAMPLES:
            self._send({"type": "input_audio_buffer.commit", "event_id": self._eid()})
            self._awaiting_reply = True
            if self._active_response is None:
                self._send({"type": "response.create", "event_id": self._eid()})
            else:  # a cancelled reply is still winding down: ask when it has ended
                self._reply_wanted = True
        elif self._uncommitted:
            logger.info("turn too short to send (%.0f ms); discarded",
                        self._uncommitted * 1000 / wire.SAMPLE_RATE)
            self._send({"type": "input_audio_buffer.clear", "event_id": self._eid()})
        self._forget_uncommitted()

    def _speaking(self) -> bool:
        return any(not it.finished and it.received for it in self._items.values())

    def _interrupt(self, *, cancel: bool) -> None:
        """Stop playback now; truncation follows in :meth:`on_playback_stopped`."""
        self.counters.interruptions += 1
        self._cancel_calls("interrupted")
        for item in self._items.values():
            if not item.finished and item.received:
                item.interrupted = True
        self._discard_active(cancel=cancel)
        self._awaiting_reply = False
        self._emit(StopPlayback())

    def _discard_active(self, *, cancel: bool) -> None:
        """Drop the rest of the active response; ``cancel`` also asks the server to stop."""
        if self._active_response is not None:
            self._discard(self._active_response)
            if cancel and self._configured:
                self._send({"type": "response.cancel", "event_id": self._eid(),
                            "response_id": self._active_response})

    def _session_update(self) -> wire.SessionUpdateParam:
        p = self.policy
        fmt: wire.AudioFormatParam = {"type": "audio/pcm", "rate": wire.SAMPLE_RATE}
        session: wire.SessionParam = {
            "type": "realtime",
            "instructions": p.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": fmt, "transcription": p.transcription,
                          "turn_detection": p.turn_detection},
                "output": {"format": fmt, "voice": p.voice},
            },
        }
        if p.send_model:
            session["model"] = p.model
        if p.tools:
            session["tools"] = list(p.tools)
            session["tool_choice"] = "auto"
        return {"type": "session.update", "event_id": self._eid(), "session": session}

    def _on_session_updated(self, ev: wire.SessionUpdated) -> None:
        if self._configured:
            return  # a later session.update (none today) changes nothing here
        self._configured = True
        self._conn_detail = "connected"
        audio = ev.session.get("audio")
        fmt = audio.get("output", {}).get("format") if isinstance(audio, dict) else None
        logger.info("session configured (output format %s)", guard.printable(fmt, 200))
        self._replay_backlog()

    def _on_audio_delta(self, ev: wire.AudioDelta) -> None:
        if ev.response_id in self._discarded or ev.item_id in self._finished:
            # a cancelled response, or audio for an item that ended and was forgotten
            self.counters.deltas_dropped += 1
            return
        item = self._item(ev.item_id, ev.response_id, ev.content_index)
        if item.finished:
            # audio after the item ended (out of order, or after an interruption)
            self.counters.deltas_dropped += 1
            return
        item.received += len(ev.pcm) // wire.BYTES_PER_SAMPLE
        self._awaiting_reply = False
        if self._device_fault is not None:
            self._reply_unheard(ev.item_id, item)
            return
        self._queued = True
        self._emit(Play(ev.pcm, ev.item_id))

    def _reply_unheard(self, item_id: str, item: _Item) -> None:
        """Reply audio while the audio devices are closed (a fault, being retried).

        Nobody hears it, so the response is cancelled and the item truncated at 0 ms, as if
        the user had interrupted it before its first sample. Playing it once the speaker is
        back would be late, and the model would believe it had been heard.
        """
        logger.info("reply audio while the audio devices are down: cancelling the "
                    "response, nothing of it heard")
        self.counters.interruptions += 1
        self._discard_active(cancel=True)
        item.interrupted = True
        item.finished = True
        item.played = 0
        self._truncate(item_id, item, 0)
        self._maybe_record(item_id, item)
        self._update()

    def _truncate(self, item_id: str, item: _Item, heard: int) -> None:
        """Tell the server the user heard ``heard`` samples of the item, if it is its.

        A reply left over from the last session is unknown to this one (the server would
        answer ``item_truncate_invalid_item_id``), and its own session is gone.
        """
        if self._configured and item.session == self._session_no:
            self._send({"type": "conversation.item.truncate", "event_id": self._eid(),
                        "item_id": item_id, "content_index": item.content_index,
                        "audio_end_ms": heard * 1000 // wire.SAMPLE_RATE})

    def _on_audio_done(self, ev: wire.AudioDone) -> None:
        item = self._items.get(ev.item_id)
        if item is None or item.finished:
            return
        item.audio_done = True
        if not self._queued:
            item.finished = True
            item.played = item.received
            self._maybe_record(ev.item_id, item)

    def _on_response_done(self, ev: wire.ResponseDone) -> None:
        if ev.status != "completed":
            logger.info("response %s ended %s%s", guard.printable(ev.response_id, 100),
                        guard.printable(ev.status, 40),
                        f" ({guard.printable(ev.reason, 100)})" if ev.reason else "")
        for item_id, text in ev.transcripts.items():
            item = self._items.get(item_id)
            if item is not None and item.transcript is None:
                item.transcript = self._bounded(text)
        self._close_response(ev.response_id)

    def _item(self, item_id: str, response_id: str, content_index: int = 0) -> _Item:
        """The item, new (of this conversation and session) if it is not known yet.

        At ``max_pending_items`` the oldest item is closed first (recorded with the words
        it has): a server that starts items and never finishes them cannot grow memory.
        """
        item = self._items.get(item_id)
        if item is None:
            while len(self._items) >= max(1, self.policy.max_pending_items):
                oldest = next(iter(self._items))
                if guard.should_log("session:items-pruned") is not None:
                    logger.warning("more than %d assistant items unfinished: closing the "
                                   "oldest (%s)", self.policy.max_pending_items,
                                   guard.printable(oldest, 100))
                self._force_close(oldest)
            item = self._items[item_id] = _Item(response_id=response_id,
                                                conversation_id=self.conversation_id,
                                                content_index=content_index,
                                                session=self._session_no)
        item.last_event = self._clock
        return item

    def _force_close(self, item_id: str) -> None:
        """End an item that will not end by itself; record its words if it has any."""
        item = self._items[item_id]
        self.counters.items_pruned += 1
        self._finish_words(item)
        if not item.finished:
            item.finished = True
            item.played = item.received if item.played is None else item.played
        self._maybe_record(item_id, item)
        self._forget(item_id)

    def _forget(self, item_id: str) -> None:
        """Drop a finished item; its late audio is still recognised as late (bounded)."""
        if self._items.pop(item_id, None) is not None:
            self._finished[item_id] = None
            while len(self._finished) > _MAX_DISCARDED:
                self._finished.popitem(last=False)

    def _close_every_response(self) -> None:
        """Every response with items still open is over: its session or conversation ended.

        Audio still queued plays out; the rest is recorded or forgotten now.
        """
        if self._active_response is not None:
            self._close_response(self._active_response)
        for response_id in {it.response_id for it in self._items.values()
                            if not it.response_over}:
            self._close_response(response_id)

    def _close_stale_items(self, now: float) -> None:
        """Items no event touched for a minute, with nothing left to play, are over."""
        if self._queued:
            return
        stale = [k for k, it in self._items.items() if now - it.last_event > _ITEM_STALE_S]
        for item_id in stale:
            logger.info("assistant item %s had no event for %g s: closing it",
                        guard.printable(item_id, 100), _ITEM_STALE_S)
            self._force_close(item_id)
        if stale:
            self._update()

    def _discard(self, response_id: str) -> None:
        """Drop the rest of this response's events (bounded: the oldest are forgotten)."""
        self._discarded[response_id] = None
        while len(self._discarded) > _MAX_DISCARDED:
            self._discarded.popitem(last=False)

    def _bounded(self, text: str) -> str:
        """``text`` as valid Unicode, cut to ``max_transcript_bytes`` of UTF-8."""
        text = wire.valid_text(text)
        limit = self.policy.max_transcript_bytes
        if len(text) * 4 <= limit or wire.utf8_len(text) <= limit:
            return text
        self.counters.transcripts_cut += 1
        if guard.should_log("session:transcript-cut") is not None:
            logger.warning("a transcript of %d characters was cut to %d bytes "
                           "(realtime.max_transcript_bytes)", len(text), limit)
        return _cut_utf8(text, limit)

    def _add_words(self, item: _Item, delta: str) -> None:
        """Keep a transcript delta (raw: a surrogate pair may be split across two)."""
        room = self.policy.max_transcript_bytes - item.partial_bytes
        if item.transcript is not None or room <= 0:
            return
        size = wire.utf8_len(delta)
        if size > room:
            delta = _cut_utf8(delta, room)
            size = wire.utf8_len(delta)
            self.counters.transcripts_cut += 1
        item.partial.append(delta)
        item.partial_bytes += size
        if len(item.partial) > _COMPACT_DELTAS:  # one string, not thousands of tiny ones
            item.partial[:] = ["".join(item.partial)]

    def _finish_words(self, item: _Item) -> None:
        """No .done will come: the words so far are the transcript.

        The deltas are joined before the text is repaired, so a surrogate pair a relay
        cut across two deltas becomes its character again.
        """
        if item.transcript is None and item.partial:
            item.transcript = self._bounded("".join(item.partial))
        item.partial.clear()
        item.partial_bytes = 0

    def _plausible_expiry(self, expires_at: float | None) -> float | None:
        """``expires_at``, unless it lies more than a day before the wall clock.

        Such a session would be replaced the moment it is created, and so would the
        next one, for good (a relay with a stale constant, a server with a broken
        clock). Its end is noticed when the server ends it instead. Smaller differences
        are honoured: a device clock that is off is no reason to miss an expiry.
        """
        if expires_at is None or self._wall is None or expires_at > self._wall - _PAST_EXPIRY_S:
            return expires_at
        if guard.should_log("session:expiry") is not None:
            logger.warning("the session's expires_at is %.0f s in the past by this device's "
                           "clock; ignoring it", self._wall - expires_at)
        return None

    def _close_response(self, response_id: str) -> None:
        """The response is over: items that got no audio are done; record what we can."""
        if self._active_response == response_id:
            self._active_response = None
        self._awaiting_reply = False
        for item_id, item in list(self._items.items()):
            if item.response_id != response_id:
                continue
            item.audio_done = True
            item.response_over = True
            self._finish_words(item)  # no .done came (a drop mid-reply): the words so far
            if not item.finished and (not item.received or not self._queued):
                item.finished = True
                item.played = item.received if item.played is None else item.played
            self._maybe_record(item_id, item)
            if item.finished and item.transcript is None and not item.recorded:
                self._forget(item_id)  # nothing will ever come for it
                logger.info("assistant item %s ended with no transcript",
                            guard.printable(item_id, 100))
        self._discarded.pop(response_id, None)
        if self._reply_wanted and self._active_response is None and self._configured:
            self._reply_wanted = False
            self._send({"type": "response.create", "event_id": self._eid()})
            self._awaiting_reply = True
        self._maybe_answer()

    def _maybe_record(self, item_id: str, item: _Item) -> None:
        if item.recorded or item.transcript is None:
            return
        if not item.finished:
            if not item.drafted:  # the words are known; how much was heard is not yet
                item.drafted = True
                self._emit(Draft(self._assistant(item_id, item, None)))
            return
        item.recorded = True
        if item.conversation_id == self.conversation_id:
            self._remember("assistant", item.transcript)
        heard_ms = round((item.played or 0) * 1000 / wire.SAMPLE_RATE)
        logger.info("assistant: %s%s", guard.printable(item.transcript, _LOG_TEXT),
                    f" [interrupted after {heard_ms} ms]" if item.interrupted else "")
        self._emit(Record(self._assistant(item_id, item, heard_ms)))
        # forget finished items so a days-long conversation does not grow memory
        for done_id in [k for k, v in self._items.items() if v.recorded]:
            self._forget(done_id)

    def _assistant(self, item_id: str, item: _Item, heard_ms: int | None) -> Transcript:
        """The assistant transcript; ``heard_ms`` None: playback has not ended yet."""
        assert item.transcript is not None
        return Transcript(
            role="assistant", text=item.transcript, item_id=item_id,
            conversation_id=item.conversation_id,
            metadata={"voice": self.policy.voice, "model": self.policy.model,
                      "item_id": item_id, "response_id": item.response_id,
                      "interrupted": item.interrupted if heard_ms is not None else None,
                      "heard_ms": heard_ms})

    def _on_user_transcript(self, ev: wire.InputTranscriptionCompleted) -> None:
        text = self._bounded(ev.transcript.strip())
        if not text:
            logger.debug("empty user transcript for %s ignored", guard.printable(ev.item_id, 100))
            return
        logger.info("user: %s", guard.printable(text, _LOG_TEXT))
        self._remember("user", text)
        self._emit(Record(Transcript(
            role="user", text=text, item_id=ev.item_id, conversation_id=self.conversation_id,
            metadata={"input_method": "realtime_voice", "model": self.policy.model,
                      "item_id": ev.item_id})))

    def _on_error(self, ev: wire.ServerError) -> None:
        self.counters.server_errors += 1
        about = self._sent.get(ev.event_id or "", "")
        where = f" (in reply to {about} {ev.event_id})" if about else ""
        if ev.code in _QUIET_ERRORS:
            logger.debug("server: %s%s", ev.code, where)
            return
        param = f" [param {guard.printable(ev.param, 100)}]" if ev.param else ""
        logger.warning("server error %s: %s%s%s", guard.printable(ev.code or ev.type, 100),
                       guard.printable(ev.message), param, where)
        if ev.code in _FATAL_ERRORS and self._configured:
            # the session works: a refused key or model ends the connection (close 3000
            # or 4000), which is what decides; an error event alone must not show `error`
            logger.warning("the session goes on; not treated as fatal")
        elif ev.code in _FATAL_ERRORS:
            self._fatal = (f"the server refused the session: {ev.code}"
                           + (": check the API key" if ev.code == "invalid_api_key" else ""))
        elif ev.code == "session_expired":
            if self._standby == "ready":
                logger.info("moving to the next session at once")
                self._switch()
            else:
                self._emit(Reconnect("session expired"))

    def _derive(self) -> tuple[State, str]:
        if self._fatal is not None:
            return State.ERROR, self._fatal
        if self._device_fault is not None:
            return State.ERROR, self._device_fault
        if not self._devices_ready:
            return State.STARTING, "devices opening"
        if not self._configured:
            return State.CONNECTING, self._conn_detail
        if self._speaking():
            return State.SPEAKING, "speaking"
        if self._tool_running():
            names = ", ".join(sorted({c.name for c in self._calls.values() if c.output is None}))
            return State.THINKING, f"running {names}"
        if self._awaiting_reply:
            return State.THINKING, "thinking"
        if self._mic_on:
            return State.LISTENING, "listening"
        return State.READY, "ready"

    def _update(self) -> None:
        if self._end_pending and not (self._speaking() or self._awaiting_reply or self._calls
                                      or self._active_response is not None or self._queued):
            self._end_pending = False  # the goodbye has been heard
            self.on_long_press(0.0)
            return
        state, detail = self._derive()
        if state != self._state or detail != self._detail:
            self._state, self._detail = state, detail
            self._emit(ShowState(state, detail))


def make_policy(*, model: str, voice: str, instructions: str, turn_type: str,
                threshold: float, prefix_padding_ms: int, silence_duration_ms: int,
                eagerness: str, transcription: wire.TranscriptionParam,
                half_duplex: bool, echo_tail_ms: int, push_to_talk: bool,
                send_model: bool, reseed_turns: int = 10,
                rollover_margin_s: float = 300.0,
                tools: tuple[wire.FunctionToolParam, ...] = (),
                client_vad: ClientVad | None = None, max_transcript_bytes: int = 65_536,
                max_pending_items: int = 64) -> Policy:
    """Build a :class:`Policy` from plain values (the supervisor maps settings here)."""
    td: wire.TurnDetectionParam | None
    if push_to_talk or turn_type != "client_vad":
        client_vad = None
    if push_to_talk or turn_type in ("none", "client_vad"):
        td = None  # the client ends turns itself
    elif turn_type == "server_vad":
        td = {"type": "server_vad", "threshold": threshold,
              "prefix_padding_ms": prefix_padding_ms,
              "silence_duration_ms": silence_duration_ms,
              "create_response": True, "interrupt_response": True}
    else:
        td = {"type": "semantic_vad", "eagerness": eagerness,
              "create_response": True, "interrupt_response": True}
    return Policy(model=model, voice=voice, instructions=instructions, turn_detection=td,
                  transcription=transcription, half_duplex=half_duplex,
                  echo_tail_ms=echo_tail_ms, send_model=send_model,
                  reseed_turns=reseed_turns, rollover_margin_s=rollover_margin_s,
                  tools=tools, client_vad=client_vad,
                  max_transcript_bytes=max_transcript_bytes,
                  max_pending_items=max_pending_items)


def _cut_utf8(text: str, limit: int) -> str:
    """The longest start of ``text`` that is at most ``limit`` bytes of UTF-8."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    end = limit
    while end > 0 and data[end] & 0xC0 == 0x80:  # not inside a character
        end -= 1
    return data[:end].decode("utf-8", "surrogatepass")


__all__ = ["CallTool", "CancelTool", "ClientVad", "CloseStandby", "Conversation", "Draft",
           "Effect", "MicOpened", "OpenStandby", "Play", "Policy", "Reconnect", "Record",
           "Send", "ShowState", "State", "StopPlayback", "SwitchToStandby", "Transcript",
           "make_policy"]
