"""The GPT-Live conversation core: a sans-I/O state machine beside :mod:`voiced.core`.

Same style as :class:`voiced.core.conversation.Conversation`: inputs are ``on_*`` calls given the
current monotonic time, outputs are effects drained with :meth:`LiveConversation.take_effects`
(the *same* effect classes, so the supervisor applies them the same way), and the state
people see is derived from a few facts after every input. Nothing here awaits, sleeps,
reads a clock or touches a socket, a device or a file.

What differs from Realtime, and how (docs/architecture.md, "GPT-Live backend"):

- **Sessions cost a minute of money per minute open**, silence included, so a session is
  opened only when the user starts talking (a press; later a wake word: ``Reconnect``)
  and closed (``session.close``, then :class:`Disconnect`) once nothing happened for
  :attr:`LiveSettings.quiet_close_s`. The device never holds one open while it waits.
- **The session is clocked by its input audio**: while a session is open the supervisor
  hands every mic frame to :meth:`LiveConversation.on_mic_frame` and the core sends one
  append per frame, the user's audio when the mic is on, digital silence when it is off
  (muted: the room never leaves the device), while the assistant speaks in half duplex,
  and while the session closes. Frames captured before ``session.started`` are kept (at
  most :attr:`LiveSettings.prestart_ms`) and sent once it has come.
- **The button maps to mute / unmute**; the shown state follows the server's acks.
- **Reply audio is one continuous track**, mostly digital silence. It is played in
  *bursts*: a burst starts with the first non-silent delta, takes every delta after it
  (so pauses inside a reply keep their length) and ends once the track has been silent
  for :attr:`LiveSettings.burst_tail_ms`; silence between bursts is not played. Each
  burst is its own ``Play`` item, whose start on the timeline is known, so the played
  position the supervisor reports maps back onto the timeline exactly. "Speaking" is a
  burst open or audio still queued.
- **No truncate exists**: a button interrupt stops playback (``StopPlayback``), drops
  non-silent output until the track has been silent for
  :attr:`LiveSettings.interrupt_hold_ms`, and (optionally) tells the model in a
  ``session.thinking.append``. ``heard_ms`` comes from the played position reported by
  :meth:`LiveConversation.on_playback_stopped`.
- **Transcripts** are assembled from fragments (:mod:`voiced.live.transcripts`) into
  records of the usual shape; a record's ``item_id`` is ``<session id>/<role>/<start_ms>``,
  so its id (uuid5 of device and item, :func:`voiced.transcripts.record_id`) is stable.
- **Tools through client delegation**: a delegation names no task, so the tool is inferred
  from the user's words (:mod:`voiced.live.intents`); its result goes back as
  ``session.commentary.append`` with the delegation's id; nothing matching is answered
  with :attr:`LiveSettings.no_tool_reply`.
- **Reconnect** is the core's own: a new session, seeded with the recent turns, after a
  backoff, only while the conversation is active.
"""

from __future__ import annotations

import logging
import math
import operator
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from voiced import guard, wire
from voiced.core.effects import (
    CallTool,
    CancelTool,
    Draft,
    MicOpened,
    Play,
    Reconnect,
    Record,
    Send,
    ShowState,
    State,
    StopPlayback,
)
from voiced.live import intents
from voiced.live import wire as lw
from voiced.live.transcripts import Assembler, Segment
from voiced.transcripts import Transcript

logger = logging.getLogger(__name__)

RATE: Final = wire.SAMPLE_RATE
_SENT_MEMORY: Final = 256
_MAX_CALLS: Final = 16
_MAX_BURSTS: Final = 16
_MAX_CUTS: Final = 16
_LOG_TEXT: Final = 1000
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


Phase = Literal["idle", "connecting", "starting", "open", "closing", "ended", "waiting"]
"""idle: no session; connecting: Reconnect asked, the socket is awaited; starting:
``session.start`` sent; open; closing: ``session.close`` sent; ended: the session is over
(``session.closed``), its socket closing; waiting: lost, a new session after a backoff."""


@dataclass(slots=True)
class _Burst:
    """One stretch of reply audio given to the speaker as one Play item."""

    id: str
    session: int  # the core's count of sessions: positions are that session's timeline
    start: int  # timeline samples where it begins
    queued: int = 0  # samples handed to the sink
    played: int | None = None  # samples the device played, once known
    quiet: int = 0  # samples of silence at its end so far
    closed: bool = False  # takes no more audio
    done: bool = False  # closed and played out (or stopped)


@dataclass(slots=True)
class _Delegation:
    """A client delegation waiting to know which tool it is."""

    offset_ms: int
    deadline_ms: int


@dataclass(slots=True)
class _Counters:
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


class LiveConversation:
    """The voice conversation over GPT-Live, as a pure state machine.

    Args:
        settings: behaviour from the configuration.
        conversation_id: the id transcripts carry until a long press starts a new one.
        new_id: makes a fresh conversation id (a UUID in production, a counter in tests).
        rand: a number in [0, 1) for the reconnect backoff's jitter.
    """

    def __init__(self, settings: LiveSettings, *, conversation_id: str,
                 new_id: Callable[[], str], rand: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.conversation_id = conversation_id
        self._new_id = new_id
        self._rand = rand
        self._effects: list[Any] = []
        self._state = State.STARTING
        self._detail = "devices opening"
        self._intents = intents.intents_for(settings.tools, dict(settings.tool_keywords))
        # facts the state is derived from
        self._devices_ready = False
        self._fatal: str | None = None
        self._device_fault: str | None = None
        self._phase: Phase = "idle"
        self._conn_up = False
        self._mic_on = False
        self._server_muted = False
        self._queued = False
        # protocol bookkeeping
        self._event_seq = 0
        self._sent: OrderedDict[str, str] = OrderedDict()
        self._start_event: str | None = None
        self.session_id: str | None = None
        self.expires_at: float | None = None
        self._model: str = settings.model
        self._session_no = 0  # sessions started: bursts and cuts belong to one
        self._phase_at = 0.0  # when the phase last changed (start timeout, close wait)
        self._retry_at = 0.0
        self._attempts = 0
        self._reopen = False  # a press while the session closed: open a new one after
        self._disconnecting = False  # a Disconnect was emitted; on_connection_down follows
        self._last_activity = -math.inf
        self._clock = 0.0
        self._timeline = 0  # samples sent in this session
        self._prestart: deque[bytes] = deque()
        self._prestart_samples = 0
        self._mute_until = 0.0
        self._zeros: bytes = b""
        self._assembler = Assembler(quiet_ms=settings.segment_quiet_ms,
                                    max_bytes=settings.max_transcript_bytes)
        self._history: deque[tuple[Literal["user", "assistant"], str]] = deque()
        # output track
        self._out_samples = 0
        self._burst: _Burst | None = None
        self._bursts: deque[_Burst] = deque()
        self._hold = False
        self._hold_quiet = 0
        # [session, start_ms, end_ms (-1: still running)] of output the user did not hear
        self._cuts: deque[list[int]] = deque()
        # assistant segments waiting for their audio to play out: (segment, its record as
        # far as known, its session)
        self._unrecorded: list[tuple[Segment, Transcript, int]] = []
        # tools
        self._delegations: dict[str, _Delegation] = {}
        self._calls: dict[str, str] = {}  # delegation id → tool name, while it runs
        # end_conversation: the timeline position it was asked at, and whether the
        # assistant has spoken (the goodbye) since
        self._end_at: int | None = None
        self._end_spoke = False
        # billing
        self._billed_done_s = 0.0  # sessions over: their final usage (or estimate)
        self._billed_reported_s = 0.0  # of which the server reported
        self._usage_s: float | None = None  # the open session's latest snapshot
        self._started_at: float | None = None
        self.counters = _Counters()

    # ------------------------------------------------------------------ public reads

    @property
    def state(self) -> State:
        """The current derived state."""
        return self._state

    @property
    def phase(self) -> Phase:
        """Where the session is: idle, connecting, starting, open, closing, waiting."""
        return self._phase

    @property
    def mic_on(self) -> bool:
        """Whether the user has the microphone switched on."""
        return self._mic_on

    @property
    def connected(self) -> bool:
        """Whether a started session is open."""
        return self._phase == "open"

    @property
    def fatal_reason(self) -> str | None:
        """Why the device is in the error state, or None."""
        return self._fatal

    def billed_seconds(self, now: float) -> tuple[float, float]:
        """Seconds billed so far, and of those the seconds the server reported.

        Every session's final usage, plus the open one's latest snapshot or its time
        since it started, whichever is more (an estimate while open).
        """
        total = self._billed_done_s
        if self._started_at is not None:
            total += max(self._usage_s or 0.0, now - self._started_at)
        return total, self._billed_reported_s + (self._usage_s or 0.0)

    def status(self) -> dict[str, Any]:
        """The contract's status fields this core knows, and the Live figures."""
        billed, reported = self.billed_seconds(self._clock)
        return {
            "state": str(self._state), "detail": self._detail,
            "mic": "on" if self._mic_on else "off", "connected": self.connected,
            "conversation_id": self.conversation_id, "session_expires_at": self.expires_at,
            "api": "live", "session": self._phase, "session_id": self.session_id,
            "billed_minutes": round(billed / 60, 2),
            "billed_seconds_reported": round(reported, 1),
            "sessions": self.counters.sessions,
            "audio_sent_ms": round(self.counters.audio_sent_ms),
            "interruptions": self.counters.interruptions,
            "server_errors": self.counters.server_errors,
            "tool_calls": self.counters.tool_calls,
            "playback_underruns": self.counters.underruns,
        }

    def take_effects(self) -> list[Any]:
        """Return the effects produced since the last call, and forget them."""
        effects, self._effects = self._effects, []
        return effects

    def instructions(self) -> str:
        """The instructions sent in ``session.start``.

        The settings' instructions, plus a delegation policy naming the tools (the voice
        model has no tool list).
        """
        text = self.settings.instructions.strip()
        if not (self.settings.delegation_policy and self._intents):
            return text
        described = {t["name"]: t.get("description", "") for t in self.settings.tools}
        lines = [f"- {i.name}: {described.get(i.name) or i.name}" for i in self._intents]
        words = ", ".join(dict.fromkeys(k for i in self._intents for k in i.keywords))
        policy = ("Delegation policy: this device can do the following itself. When the "
                  "user asks for one of them, delegate the task to the app and speak its "
                  "answer in your own words; never guess the result.\n" + "\n".join(lines)
                  + f"\nDelegate: {words}")
        return f"{text}\n\n{policy}" if text else policy

    def set_settings(self, settings: LiveSettings) -> None:
        """New settings (SIGHUP).

        What ``session.start`` carries applies from the next session (the service makes
        it immutable); the rest at once.
        """
        self.settings = settings
        self._intents = intents.intents_for(settings.tools, dict(settings.tool_keywords))
        self._update()

    # ---------------------------------------------------------------- device inputs

    def on_devices_ready(self) -> None:
        """The mic and speaker are open."""
        self._devices_ready = True
        self._update()

    def on_fatal(self, reason: str) -> None:
        """Something only a person can fix (bad key, device gone for good)."""
        self._fatal = reason
        self._update()

    def on_fatal_cleared(self) -> None:
        """The fatal condition went away."""
        self._fatal = None
        self._update()

    def on_device_fault(self, reason: str) -> None:
        """The mic or speaker failed; reply audio is dropped until it is back."""
        self._device_fault = reason
        self._update()

    def on_device_restored(self) -> None:
        """The failed device is open again."""
        self._device_fault = None
        self._update()

    # ------------------------------------------------------------------ user inputs

    def on_press(self, now: float) -> None:
        """A short press: toggle the mic (opening a session if none); stop speech first."""
        self._clock = now
        self._last_activity = now
        if self._speaking():
            self._interrupt()
            self._set_mic(True, now)
        else:
            self._set_mic(not self._mic_on, now)
        self._update()

    def on_talk_start(self, now: float) -> None:
        """Push to talk: the button went down (also the wake word, later)."""
        self._clock = now
        self._last_activity = now
        if self._speaking():
            self._interrupt()
        self._set_mic(True, now)
        self._update()

    def on_talk_end(self, now: float) -> None:
        """Push to talk: the button came up: mute (there is no end of turn to send)."""
        self._clock = now
        self._last_activity = now
        self._set_mic(False, now)
        self._update()

    def on_interrupt(self, now: float) -> None:
        """`voiced ctl interrupt`: stop the assistant if it is speaking."""
        self._clock = now
        if self._speaking():
            self._last_activity = now
            self._interrupt()
            self._update()

    def on_long_press(self, now: float) -> None:
        """End this conversation: close the session; the next press starts afresh."""
        self._clock = now
        self._end_at = None
        if self._speaking():
            self._interrupt()
        self._mic_on = False
        self._reopen = False
        for seg in self._assembler.close():  # recorded in the conversation they belong to
            self._segment_closed(seg)
        self._end_session("new conversation", now)
        self.conversation_id = self._new_id()
        self._history.clear()
        logger.info("starting a new conversation %s", self.conversation_id)
        self._update()

    def mute_mic(self) -> None:
        """A tool switched the microphone off (the button switches it on again)."""
        self._set_mic(False, self._clock)
        self._update()

    def end_conversation(self) -> None:
        """A tool ended the conversation: it ends once the goodbye has been heard.

        There is no response to wait for: the goodbye is the assistant's next speech
        (played out), or nothing within :data:`END_WAIT_MS` of timeline.
        """
        self._end_at = self._timeline * 1000 // RATE
        self._end_spoke = False

    def on_mic_frame(self, pcm: bytes, now: float, speech: bool = False) -> None:
        """Every mic frame (PCM16 24 kHz mono), whatever the mic state.

        While a session is open one append goes out per frame: the frame when the mic is
        on, silence of the same length otherwise. ``speech`` is the device VAD's verdict
        (counts as activity for the quiet close).
        """
        self._clock = now
        if speech and self._mic_on:
            self._last_activity = now
        phase = self._phase
        if phase == "open" or phase == "closing":  # closing: the server finalizes on it
            live = (phase == "open" and self._mic_on
                    and not (self.settings.half_duplex
                             and (self._speaking() or now < self._mute_until)))
            self._append(pcm if live else self._silence(len(pcm)), live)
            if self._assembler.open or self._delegations or self._end_at is not None:
                self._on_timeline()
        elif phase in ("connecting", "starting") and self.settings.prestart_ms > 0:
            self._keep(pcm if self._mic_on else self._silence(len(pcm)))

    def on_audio_captured(self, pcm: bytes, now: float, speech: bool = False) -> None:
        """The supervisor's name for a mic frame (:meth:`on_mic_frame`)."""
        self.on_mic_frame(pcm, now, speech)

    # ------------------------------------------------------------- connection inputs

    def on_connection_up(self, now: float) -> None:
        """The WebSocket is open: start the session (``session.start``)."""
        self._clock = now
        self._conn_up = True
        self._disconnecting = False
        if self._phase != "connecting":
            logger.warning("a Live connection opened while %s: closing it", self._phase)
            self._emit(Disconnect("not wanted"))
            return
        self._set_phase("starting", now)
        self._start_event = self._eid()
        history = self._seed()
        if history:
            logger.info("seeding the new session with %d earlier turn(s)", len(history))
        self._send(lw.session_start(
            self._start_event, model=self.settings.model, instructions=self.instructions(),
            voice=self.settings.voice, ack_delay_ms=self.settings.ack_delay_ms,
            history=history, safety_identifier=self.settings.safety_identifier))
        self._update()

    def on_connection_down(self, reason: str, now: float) -> None:
        """The WebSocket closed or could not open; ``reason`` is a few words."""
        self._clock = now
        was_up, self._conn_up = self._conn_up, False
        self._disconnecting = False
        phase = self._phase
        if phase == "connecting" and was_up:
            return  # the previous connection, closed for the one being opened
        if phase in ("starting", "open", "closing"):
            self._session_over(None, now)
        if phase in ("closing", "ended", "idle"):
            self._set_phase("idle", now)
            if self._reopen:
                self._reopen = False
                self._open(now, "the user started talking")
        elif self._wanted(now) and self._fatal is None:
            delay = min(self.settings.reconnect_min_s * 2 ** self._attempts,
                        self.settings.reconnect_max_s) * (0.75 + 0.25 * self._rand())
            self._attempts += 1
            self._retry_at = now + delay
            logger.info("Live connection lost (%s): a new session in %.1f s",
                        guard.printable(reason, 100), delay)
            self._set_phase("waiting", now)
        else:
            logger.info("Live connection closed (%s)", guard.printable(reason, 100))
            self._mic_on = False
            self._set_phase("idle", now)
        self._update()

    def on_tick(self, now: float, wall: float) -> None:
        """About once a second: reconnects, the quiet close, timeouts."""
        self._clock = now
        phase = self._phase
        if phase == "waiting" and now >= self._retry_at:
            if self._wanted(now):
                self.counters.reconnects += 1
                self._open(now, "reconnecting")
            else:
                logger.info("nobody is talking any more: not reconnecting")
                self._mic_on = False
                self._set_phase("idle", now)
        elif (phase == "starting" and now - self._phase_at > START_TIMEOUT_S
              and not self._disconnecting):
            # its on_connection_down is then a lost session like any other: backoff
            logger.warning("session.started did not come within %g s", START_TIMEOUT_S)
            self._disconnect("session.started did not come")
        elif (phase == "closing" and now - self._phase_at > self.settings.close_wait_s
              and not self._disconnecting):
            logger.info("session.closed did not come within %g s: closing the connection",
                        self.settings.close_wait_s)
            self._disconnect("session.closed did not come")
        elif phase == "open" and self._quiet(now):
            logger.info("no conversation for %g s: closing the session (it bills while "
                        "open)", self.settings.quiet_close_s)
            self._mic_on = False
            self._close(now)
        self._update()

    # ------------------------------------------------------------------ tool inputs

    def on_tool_result(self, call_id: str, output: str, now: float) -> None:
        """A tool finished: its result goes to the model as the delegation's commentary."""
        self._clock = now
        name = self._calls.pop(call_id, None)
        if name is None:
            logger.debug("result for call %s nobody waits for", call_id)
            return
        self._last_activity = now
        if self._phase == "open":
            self._send(lw.context_append(self._eid(), "commentary",
                                         f"Result of {name}: {output}", call_id))
        else:
            logger.info("tool %s finished after its session ended; result dropped", name)
        self._update()

    # ---------------------------------------------------------------- playback inputs

    def on_playback_stopped(self, now: float, played: Mapping[str, int]) -> None:
        """Answer to :class:`StopPlayback`: samples of each burst the device played.

        Bursts absent from ``played`` were played in full.
        """
        self._clock = now
        self._queued = False
        self._mute_until = now + self.settings.echo_tail_ms / 1000
        for b in self._bursts:
            if not b.done:
                b.played = max(0, min(played.get(b.id, b.queued), b.queued))
                b.closed = b.done = True
                cut = self._cuts[-1] if self._cuts else None
                if b.played < b.queued and cut is not None and cut[0] == b.session:
                    cut[1] = min(cut[1], (b.start + b.played) * 1000 // RATE)
        if self.settings.tell_model_on_interrupt and self._phase == "open":
            self._send(lw.context_append(
                self._eid(), "thinking", "The user pressed the stop button while you were "
                "speaking and did not hear the rest of that reply. Do not go on with it "
                "unless they ask.", None))
        self._flush_records()
        self._update()

    def on_playback_drained(self, now: float) -> None:
        """Everything queued has been played."""
        self._clock = now
        if self._burst is not None:
            self.counters.underruns += 1  # the network fell behind real time
        self._queued = False
        self._mute_until = now + self.settings.echo_tail_ms / 1000
        for b in self._bursts:
            if not b.done:
                b.played = b.queued
                b.done = b.closed
        self._flush_records()
        self._update()

    def on_playback_full(self, item_id: str, refused: int, now: float) -> None:
        """The sink refused ``refused`` samples: that much of the burst is never heard."""
        self.counters.playback_overflows += 1
        for b in self._bursts:
            if b.id == item_id:
                b.queued = max(0, b.queued - refused)

    # ------------------------------------------------------------------ server inputs

    def on_server_event(self, ev: lw.ServerEvent, now: float) -> None:
        """Act on one parsed Live server event."""
        self._clock = now
        match ev:
            case lw.OutputAudio():
                self._on_output(ev.pcm, now)
                return  # ten a second: the state changes only through playback
            case lw.TranscriptDelta():
                self._on_transcript(ev, now)
            case lw.SessionStarted():
                self._on_started(ev, now)
            case lw.InputMuted():
                self._server_muted = ev.muted
            case lw.DelegationCreated():
                self._on_delegation(ev, now)
            case lw.ContextAppended():
                logger.debug("%s placed at %d ms", ev.kind, ev.start_ms)
            case lw.UsageUpdated():
                if ev.seconds is not None and self._started_at is not None:
                    self._usage_s = ev.seconds
            case lw.SessionClosed():
                self._on_closed(ev, now)
            case lw.ServerError():
                self._on_error(ev, now)
            case lw.Info():
                logger.info("server notice %s: %s", guard.printable(ev.code, 100),
                            guard.printable(ev.message))
            case _:
                logger.debug("ignoring server event %s", guard.printable(ev.type, 100))
        self._update()

    # ------------------------------------------------------------------ sessions

    def _set_phase(self, phase: Phase, now: float) -> None:
        self._phase = phase
        self._phase_at = now

    def _wanted(self, now: float) -> bool:
        """The conversation is active: a session lost now is worth a new one."""
        return now - self._last_activity < self.settings.quiet_close_s

    def _disconnect(self, why: str) -> None:
        self._disconnecting = True
        self._emit(Disconnect(why))

    def _open(self, now: float, why: str) -> None:
        """Ask for a connection; ``session.start`` follows once it is up."""
        self._prestart.clear()
        self._prestart_samples = 0
        self._set_phase("connecting", now)
        self._emit(Reconnect(why))

    def _close(self, now: float) -> None:
        """Ask the server to end the session; the socket closes once it has."""
        self._send(lw.session_close(self._eid()))
        self._set_phase("closing", now)

    def _end_session(self, why: str, now: float) -> None:
        """Whatever the phase, no session is wanted any more."""
        if self._phase == "open":
            self._close(now)
        elif self._phase in ("connecting", "starting"):
            self._disconnect(why)
            self._session_over(None, now)
            self._set_phase("ended", now)
        elif self._phase == "waiting":
            self._set_phase("idle", now)

    def _on_started(self, ev: lw.SessionStarted, now: float) -> None:
        if self._phase != "starting":
            logger.warning("session.started while %s: ignored", self._phase)
            return
        self._set_phase("open", now)
        self._session_no += 1
        self.session_id = ev.session_id
        self.expires_at = ev.expires_at
        self._model = ev.model or self.settings.model
        self._started_at = now
        self._usage_s = None
        self._attempts = 0
        self._last_activity = now
        self._timeline = 0
        self._out_samples = 0
        self._server_muted = False
        self._hold = False
        self._assembler = Assembler(quiet_ms=self.settings.segment_quiet_ms,
                                    max_bytes=self.settings.max_transcript_bytes)
        self.counters.sessions += 1
        logger.info("Live session %s started (%s)", guard.printable(ev.session_id, 100),
                    guard.printable(self._model, 100))
        if not self._mic_on:
            self._send(lw.mute(self._eid(), True))
        frames, self._prestart = list(self._prestart), deque()
        self._prestart_samples = 0
        if frames:  # the user's first words, said while the session started
            logger.info("sending the %d ms said while the session started",
                        sum(map(len, frames)) * 500 // RATE)
        for pcm in frames:
            self._append(pcm, any(pcm))

    def _on_closed(self, ev: lw.SessionClosed, now: float) -> None:
        if self._phase not in ("starting", "open", "closing"):
            return  # a session already over
        logger.info("Live session ended: %s", guard.printable(ev.reason, 40))
        asked = self._phase == "closing"
        if ev.seconds is not None and self._started_at is not None:
            self._usage_s = ev.seconds
        self._session_over(ev.seconds, now)
        if asked or ev.reason == "close_requested":
            self._disconnect("session closed")
            self._set_phase("ended", now)  # the socket's close is the end of it
        elif ev.reason == "content":
            logger.warning("the service ended the session (its safety filter)")
            self._mic_on = False
            self._disconnect("closed by the service: content")
            self._set_phase("ended", now)
        elif self._wanted(now):
            logger.info("the session ended (%s) mid-conversation: opening a new one",
                        guard.printable(ev.reason, 40))
            self.counters.reconnects += 1
            self._open(now, f"session {ev.reason}")
        else:
            self._mic_on = False
            self._disconnect(f"session {ev.reason}")
            self._set_phase("ended", now)

    def _session_over(self, final_s: float | None, now: float) -> None:
        """The session ended (closed, dropped or given up): account, record, cancel."""
        if self._started_at is not None:
            estimate = max(self._usage_s or 0.0, now - self._started_at)
            self._billed_done_s += final_s if final_s is not None else estimate
            self._billed_reported_s += final_s if final_s is not None else (
                self._usage_s or 0.0)
        self._started_at = None
        self._usage_s = None
        self._server_muted = False
        if self._burst is not None:
            self._burst.closed = True
            self._burst = None
        for b in self._bursts:
            b.closed = True
            b.done = b.done or not self._queued
        for seg in self._assembler.close():
            self._segment_closed(seg)
        self._cancel_calls("the session ended")
        self._delegations.clear()
        self._flush_records()
        self.session_id = None
        self.expires_at = None

    def _seed(self) -> list[lw.InitialItemParam]:
        """The newest turns that fit the settings' bounds, oldest first."""
        items: list[lw.InitialItemParam] = []
        chars = 0
        for role, text in reversed(self._history):
            if len(items) >= self.settings.reseed_turns:
                break
            chars += len(text)
            if chars > self.settings.reseed_max_chars:
                break
            items.append(lw.history_item(role, text))
        return items[::-1]

    def _quiet(self, now: float) -> bool:
        return (now - self._last_activity >= self.settings.quiet_close_s
                and not self._speaking() and not self._calls and not self._delegations)

    # ------------------------------------------------------------------ mic

    def _set_mic(self, on: bool, now: float) -> None:
        if on == self._mic_on:
            return
        self._mic_on = on
        logger.info("microphone %s", "on" if on else "off")
        if on:
            self._emit(MicOpened())
            if self._phase == "idle":
                self._open(now, "the user started talking")
            elif self._phase == "waiting":
                self._open(now, "the user pressed the button")
            elif self._phase in ("closing", "ended"):
                self._reopen = True
            elif self._phase == "open":
                self._send(lw.mute(self._eid(), False))
        elif self._phase == "open":
            self._send(lw.mute(self._eid(), True))

    def _append(self, pcm: bytes, live: bool) -> None:
        n = len(pcm) // wire.BYTES_PER_SAMPLE
        self._timeline += n
        ms = n * 1000 / RATE
        if live:
            self.counters.audio_sent_ms += ms
        else:
            self.counters.silence_sent_ms += ms
        self._emit(Send(cast(wire.ClientEvent, lw.audio_append(pcm))))

    def _silence(self, nbytes: int) -> bytes:
        if len(self._zeros) != nbytes:
            self._zeros = bytes(nbytes)
        return self._zeros

    def _keep(self, pcm: bytes) -> None:
        self._prestart.append(pcm)
        self._prestart_samples += len(pcm) // wire.BYTES_PER_SAMPLE
        limit = self.settings.prestart_ms * RATE // 1000
        while self._prestart_samples > limit:
            self._prestart_samples -= len(self._prestart.popleft()) // wire.BYTES_PER_SAMPLE
            self.counters.prestart_dropped += 1

    def _on_timeline(self) -> None:
        """The timeline moved: segments close, delegations stop waiting for words."""
        now_ms = self._timeline * 1000 // RATE
        for seg in self._assembler.advance(now_ms):
            self._segment_closed(seg)
        for did, d in list(self._delegations.items()):
            if now_ms >= d.deadline_ms:
                self._resolve(did, d, final=True)
        self._update()

    # ------------------------------------------------------------------ output

    def _on_output(self, pcm: bytes, now: float) -> None:
        if self._phase not in ("open", "closing"):
            return  # a session that is over (or never started) has nothing to say
        n = len(pcm) // wire.BYTES_PER_SAMPLE
        pos = self._out_samples
        self._out_samples += n
        if not n:
            return
        silent = _silent(pcm, self.settings.silence_rms)
        if self._hold:
            self._hold_quiet = self._hold_quiet + n if silent else 0
            if self._hold_quiet * 1000 >= self.settings.interrupt_hold_ms * RATE:
                self._hold = False
                if self._cuts and self._cuts[-1][2] < 0:
                    self._cuts[-1][2] = self._out_samples * 1000 // RATE
            if not silent:
                self.counters.output_dropped += 1
            return
        if self._device_fault is not None:
            self.counters.output_dropped += 1
            return
        burst = self._burst
        if burst is None:
            if silent:
                return  # the track's silence between replies is not played
            burst = self._burst = _Burst(id=f"{self.session_id}@{pos * 1000 // RATE}",
                                         session=self._session_no, start=pos)
            self._bursts.append(burst)
            self._end_spoke = self._end_at is not None
            # played-out bursts are forgotten; the sink's bound (audio.max_queued_s)
            # bounds the rest, and a hard cap holds even if it did not
            while len(self._bursts) > _MAX_BURSTS and (self._bursts[0].done or len(
                    self._bursts) > 8 * _MAX_BURSTS):
                self._bursts.popleft()
        if silent:
            burst.quiet += n
        else:
            burst.quiet = 0
            self._last_activity = now
        burst.queued += n
        was_queued, self._queued = self._queued, True
        self._emit(Play(pcm, burst.id))
        if burst.quiet * 1000 >= self.settings.burst_tail_ms * RATE:
            burst.closed = True
            self._burst = None
        if not was_queued:
            self._update()

    def _speaking(self) -> bool:
        return self._burst is not None or self._queued

    def _interrupt(self) -> None:
        """Stop playback; the played position comes with :meth:`on_playback_stopped`."""
        self.counters.interruptions += 1
        logger.info("interrupted: playback stopped, the rest of the reply is dropped")
        self._emit(StopPlayback())
        self._hold = True
        self._hold_quiet = 0
        # what arrives from here until the hold ends is not heard; the start moves back
        # to the played position when on_playback_stopped reports it
        self._cuts.append([self._session_no, self._out_samples * 1000 // RATE, -1])
        while len(self._cuts) > _MAX_CUTS:
            self._cuts.popleft()
        if self._burst is not None:
            self._burst.closed = True
            self._burst = None
        self._queued = False

    # ------------------------------------------------------------------ transcripts

    def _on_transcript(self, ev: lw.TranscriptDelta, now: float) -> None:
        if self._phase != "open":
            return  # closing: the conversation was ended or went quiet
        self._last_activity = now
        for seg in self._assembler.add(ev.role, ev.event_id, ev.delta, ev.start_ms,
                                       ev.end_ms):
            self._segment_closed(seg)
        if ev.role == "user":
            for did, d in list(self._delegations.items()):
                self._resolve(did, d, final=False)

    def _segment_closed(self, seg: Segment) -> None:
        if not seg.text:
            return
        if seg.role == "user":
            self._record(seg, self._transcript(seg))
            return
        entry = (seg, self._transcript(seg), self._session_no)
        self._unrecorded.append(entry)
        if len(self._unrecorded) > _MAX_BURSTS:  # playback never reported: record anyway
            old, draft, _ = self._unrecorded.pop(0)
            self._record(old, draft)
        self._flush_records()
        if entry in self._unrecorded:  # its audio still plays: the words survive a crash
            self._emit(Draft(entry[1]))

    def _flush_records(self) -> None:
        """Record the assistant segments whose audio has finished playing."""
        for entry in list(self._unrecorded):
            seg, draft, session = entry
            mine = [b for b in self._bursts if b.session == session]
            if any(not b.done and b.start * 1000 // RATE < seg.end_ms for b in mine):
                continue
            self._unrecorded.remove(entry)
            self._record(seg, Transcript(
                role=draft.role, text=draft.text, item_id=draft.item_id,
                conversation_id=draft.conversation_id,
                metadata={**draft.metadata, "interrupted": self._interrupted(seg, session),
                          "heard_ms": self._heard_ms(seg, mine)}))

    @staticmethod
    def _heard_ms(seg: Segment, bursts: list[_Burst]) -> int:
        """Milliseconds of the segment's span that were played (bursts of its session)."""
        heard = 0
        for b in bursts:
            start = b.start * 1000 // RATE
            end = start + (b.played or 0) * 1000 // RATE
            heard += max(0, min(end, seg.end_ms) - max(start, seg.start_ms))
        return min(heard, seg.end_ms - seg.start_ms)

    def _interrupted(self, seg: Segment, session: int) -> bool:
        """Talked over, or cut by the button (output of its span went unheard)."""
        return seg.barged or any(n == session and s < seg.end_ms and (e < 0 or e > seg.start_ms)
                                 for n, s, e in self._cuts)

    def _item_id(self, seg: Segment) -> str:
        return f"{self.session_id or 'live'}/{seg.role}/{seg.start_ms}"

    def _transcript(self, seg: Segment) -> Transcript:
        """A segment of the current session and conversation as a record.

        An assistant's ``interrupted`` and ``heard_ms`` stay None until its audio played.
        """
        item_id = self._item_id(seg)
        base = {"api": "live", "model": self._model, "item_id": item_id,
                "session_id": self.session_id, "start_ms": seg.start_ms,
                "end_ms": seg.end_ms}
        if seg.role == "user":
            metadata = {"input_method": "realtime_voice", **base}
        else:
            metadata = {"voice": self.settings.voice, **base, "response_id": None,
                        "interrupted": None, "heard_ms": None}
        if seg.cut:
            metadata["truncated"] = True
        return Transcript(role=seg.role, text=seg.text, item_id=item_id,
                          conversation_id=self.conversation_id, metadata=metadata)

    def _record(self, seg: Segment, t: Transcript) -> None:
        logger.info("%s: %s%s", seg.role, guard.printable(t.text, _LOG_TEXT),
                    " [interrupted]" if t.metadata.get("interrupted") else "")
        if t.conversation_id == self.conversation_id:
            self._history.append((seg.role, t.text))
            while len(self._history) > max(self.settings.reseed_turns, 1):
                self._history.popleft()
        self._emit(Record(t))

    # ------------------------------------------------------------------ delegation

    def _on_delegation(self, ev: lw.DelegationCreated, now: float) -> None:
        if ev.target != "client":
            logger.warning("a %s delegation on a client-delegation session: ignored",
                           guard.printable(ev.target, 40))
            return
        if self._phase != "open" or ev.delegation_id in self._delegations:
            return
        self._last_activity = now
        if len(self._delegations) + len(self._calls) >= _MAX_CALLS:
            self._send(lw.context_append(self._eid(), "commentary",
                                         "Too many requests at once; try again.",
                                         ev.delegation_id))
            return
        d = _Delegation(ev.offset_ms, ev.offset_ms + self.settings.delegation_wait_ms)
        self._delegations[ev.delegation_id] = d
        self._resolve(ev.delegation_id, d, final=False)

    def _resolve(self, delegation_id: str, d: _Delegation, *, final: bool) -> None:
        words = self._assembler.user_words(d.deadline_ms)
        found = intents.match(self._intents, words)
        if found is None and not final:
            return
        del self._delegations[delegation_id]
        if found is None:
            self.counters.delegations_unmatched += 1
            logger.info("delegation: no tool for %r", guard.printable(words, 200))
            self._send(lw.context_append(self._eid(), "commentary",
                                         self.settings.no_tool_reply, delegation_id))
            return
        logger.info("delegation: %s (from %r)", found.name, guard.printable(found.keyword, 60))
        self.counters.tool_calls += 1
        self._calls[delegation_id] = found.name
        self._emit(CallTool(delegation_id, found.name, found.arguments))

    def _cancel_calls(self, why: str) -> None:
        for call_id, name in self._calls.items():
            logger.info("tool %s cancelled: %s", name, why)
            self._emit(CancelTool(call_id))
        self._calls.clear()

    # ------------------------------------------------------------------ errors

    def _on_error(self, ev: lw.ServerError, now: float) -> None:
        self.counters.server_errors += 1
        about = self._sent.get(ev.client_event_id or "", "")
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
                         and self._phase == "starting")
        if ev.code in FATAL_ERRORS and self._phase == "open":
            logger.warning("the session goes on; not treated as fatal")
        elif ev.code in FATAL_ERRORS or refused_start:
            self._fatal = (f"the service refused the session: {guard.printable(code, 100)}"
                           + (": check the API key" if ev.code == "invalid_api_key" else ""))
            self._mic_on = False
            self._end_session("refused", now)

    # ------------------------------------------------------------------ plumbing

    def _emit(self, effect: Any) -> None:
        self._effects.append(effect)

    def _eid(self) -> str:
        self._event_seq += 1
        return f"voiced_{self._event_seq}"

    def _send(self, event: lw.ClientEvent) -> None:
        eid = event.get("event_id")
        if isinstance(eid, str):
            self._sent[eid] = lw.describe(event)
            if len(self._sent) > _SENT_MEMORY:
                self._sent.popitem(last=False)
        # Send names the Realtime union; the supervisor encodes any event the same way
        self._emit(Send(cast(wire.ClientEvent, event)))

    def _derive(self) -> tuple[State, str]:
        if self._fatal is not None:
            return State.ERROR, self._fatal
        if self._device_fault is not None:
            return State.ERROR, self._device_fault
        if not self._devices_ready:
            return State.STARTING, "devices opening"
        if self._phase == "connecting":
            return State.CONNECTING, "opening a Live session"
        if self._phase == "starting":
            return State.CONNECTING, "starting the Live session"
        if self._phase == "waiting":
            return State.CONNECTING, "reconnecting"
        if self._speaking():
            return State.SPEAKING, "speaking"
        if self._calls:
            return State.THINKING, "running " + ", ".join(sorted(set(self._calls.values())))
        if self._delegations:
            return State.THINKING, "thinking"
        if self._phase == "open" and not self._server_muted:
            return State.LISTENING, "listening"
        return State.READY, "ready"

    def _update(self) -> None:
        if self._end_at is not None and not (self._speaking() or self._calls
                                             or self._delegations) and (
                self._end_spoke or self._timeline * 1000 // RATE >= self._end_at + END_WAIT_MS):
            self._end_at = None  # the goodbye has been heard
            self.on_long_press(self._clock)
            return
        state, detail = self._derive()
        if state != self._state or detail != self._detail:
            self._state, self._detail = state, detail
            self._emit(ShowState(state, detail))


def _silent(pcm: bytes, floor: float) -> bool:
    """Digital silence, or an RMS at most ``floor``.

    Over every fourth sample: ten deltas a second on a small board, for a level, not a
    measurement.
    """
    if pcm.count(0) == len(pcm):
        return True
    a = memoryview(pcm).cast("h")[::4]
    return math.sqrt(sum(map(operator.mul, a, a)) / max(1, len(a))) <= floor


__all__ = ["FATAL_ERRORS", "Disconnect", "LiveConversation", "LiveSettings"]
