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

The conversation composes its parts, each with its own ledger: :class:`Uplink` (mic
frames, the pre-start burst), :class:`Track` (the reply track, bursts, what was heard),
:class:`Records` (transcripts, records, history), :class:`Delegations` (tools) and
:class:`Sessions` (the session's life, reconnect, billing); the facts they share are in
:class:`LiveFacts`. The state shown to people is derived from them after every input.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from voiced import guard
from voiced.core.effects import ShowState, State
from voiced.core.history import History
from voiced.live import wire as lw
from voiced.live.delegation import Delegations
from voiced.live.facts import Counters, LiveFacts, Out, Phase
from voiced.live.records import Records
from voiced.live.session import Sessions
from voiced.live.settings import END_WAIT_MS, FATAL_ERRORS, Disconnect, LiveSettings
from voiced.live.track import Track
from voiced.live.uplink import Uplink

logger = logging.getLogger(__name__)


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
        self._new_id = new_id
        self.facts = LiveFacts(settings=settings, conversation_id=conversation_id,
                               model=settings.model)
        self.out = Out()
        self.history = History()
        self.uplink = Uplink(self.facts, self.out)
        self.track = Track(self.facts, self.out)
        self.records = Records(self.facts, self.out, self.track, self.history)
        self.delegations = Delegations(self.facts, self.out, self.records)
        self.sessions = Sessions(self.facts, self.out, uplink=self.uplink, track=self.track,
                                 records=self.records, delegations=self.delegations,
                                 rand=rand)
        self._state = State.STARTING
        self._detail = "devices opening"
        self._devices_ready = False

    # ------------------------------------------------------------------ public reads

    @property
    def settings(self) -> LiveSettings:
        """The settings in force."""
        return self.facts.settings

    @property
    def conversation_id(self) -> str:
        """The id transcripts carry."""
        return self.facts.conversation_id

    @property
    def counters(self) -> Counters:
        """What the core counts."""
        return self.facts.counters

    @property
    def session_id(self) -> str | None:
        """The open session's id, if one has started."""
        return self.facts.session_id

    @property
    def expires_at(self) -> float | None:
        """When the open session expires (epoch seconds), if the server said."""
        return self.facts.expires_at

    @property
    def state(self) -> State:
        """The current derived state."""
        return self._state

    @property
    def phase(self) -> Phase:
        """Where the session is: idle, connecting, starting, open, closing, waiting."""
        return self.facts.phase

    @property
    def mic_on(self) -> bool:
        """Whether the user has the microphone switched on."""
        return self.facts.mic_on

    @property
    def connected(self) -> bool:
        """Whether a started session is open."""
        return self.facts.phase == "open"

    @property
    def fatal_reason(self) -> str | None:
        """Why the device is in the error state, or None."""
        return self.facts.fatal

    def billed_seconds(self, now: float) -> tuple[float, float]:
        """Seconds billed so far, and of those the seconds the server reported."""
        return self.sessions.billed_seconds(now)

    def status(self) -> dict[str, Any]:
        """The contract's status fields this core knows, and the Live figures."""
        billed, reported = self.billed_seconds(self.facts.clock)
        c = self.counters
        return {
            "state": str(self._state), "detail": self._detail,
            "mic": "on" if self.mic_on else "off", "connected": self.connected,
            "conversation_id": self.conversation_id, "session_expires_at": self.expires_at,
            "api": "live", "session": self.phase, "session_id": self.session_id,
            "billed_minutes": round(billed / 60, 2),
            "billed_seconds_reported": round(reported, 1),
            "sessions": c.sessions,
            "audio_sent_ms": round(c.audio_sent_ms),
            "interruptions": c.interruptions,
            "server_errors": c.server_errors,
            "tool_calls": c.tool_calls,
            "playback_underruns": c.underruns,
        }

    def take_effects(self) -> list[Any]:
        """Return the effects produced since the last call, and forget them."""
        return self.out.take()

    def instructions(self) -> str:
        """The instructions sent in ``session.start`` (with the delegation policy)."""
        return self.delegations.instructions()

    def set_settings(self, settings: LiveSettings) -> None:
        """New settings (SIGHUP).

        What ``session.start`` carries applies from the next session (the service makes
        it immutable); the rest at once.
        """
        self.facts.settings = settings
        self.delegations.set_settings(settings)
        self._update()

    # ---------------------------------------------------------------- device inputs

    def on_stopping(self) -> None:
        """The daemon stops: the replies still waiting for playback are recorded now."""
        self.records.release()

    def on_devices_ready(self) -> None:
        """The mic and speaker are open."""
        self._devices_ready = True
        self._update()

    def on_fatal(self, reason: str) -> None:
        """Something only a person can fix (bad key, device gone for good)."""
        self.facts.fatal = reason
        self._update()

    def on_fatal_cleared(self) -> None:
        """The fatal condition went away."""
        self.facts.fatal = None
        self._update()

    def on_device_fault(self, reason: str) -> None:
        """The mic or speaker failed; reply audio is dropped until it is back."""
        self.facts.device_fault = reason
        self._update()

    def on_device_restored(self) -> None:
        """The failed device is open again."""
        self.facts.device_fault = None
        self._update()

    # ------------------------------------------------------------------ user inputs

    def on_press(self, now: float) -> None:
        """A short press: toggle the mic (opening a session if none); stop speech first."""
        self._user(now)
        if self.track.speaking():
            self.track.interrupt()
            self.sessions.set_mic(True, now)
        else:
            self.sessions.set_mic(not self.mic_on, now)
        self._update()

    def on_talk_start(self, now: float) -> None:
        """Push to talk: the button went down (also the wake word, later)."""
        self._user(now)
        if self.track.speaking():
            self.track.interrupt()
        self.sessions.set_mic(True, now)
        self._update()

    def on_talk_end(self, now: float) -> None:
        """Push to talk: the button came up: mute (there is no end of turn to send)."""
        self._user(now)
        self.sessions.set_mic(False, now)
        self._update()

    def on_interrupt(self, now: float) -> None:
        """`voiced ctl interrupt`: stop the assistant if it is speaking."""
        self.facts.clock = now
        if self.track.speaking():
            self.facts.last_activity = now
            self.track.interrupt()
            self._update()

    def on_long_press(self, now: float) -> None:
        """End this conversation: close the session; the next press starts afresh."""
        f = self.facts
        f.clock = now
        f.end_at = None
        if self.track.speaking():
            self.track.interrupt()
        f.mic_on = False
        self.sessions.reopen = False
        self.records.close_open()  # recorded in the conversation they belong to
        self.sessions.end_session("new conversation", now)
        f.conversation_id = self._new_id()
        self.history.clear()
        logger.info("starting a new conversation %s", f.conversation_id)
        self._update()

    def mute_mic(self) -> None:
        """A tool switched the microphone off (the button switches it on again)."""
        self.sessions.set_mic(False, self.facts.clock)
        self._update()

    def end_conversation(self) -> None:
        """A tool ended the conversation: it ends once the goodbye has been heard.

        There is no response to wait for: the goodbye is the assistant's next speech
        (played out), or nothing within :data:`END_WAIT_MS` of timeline.
        """
        self.facts.end_at = self.facts.timeline_ms()
        self.facts.end_spoke = False

    def on_mic_frame(self, pcm: bytes, now: float, speech: bool = False) -> None:
        """Every mic frame (PCM16 24 kHz mono), whatever the mic state.

        While a session is open one append goes out per frame: the frame when the mic is
        on, silence of the same length otherwise. ``speech`` is the device VAD's verdict
        (counts as activity for the quiet close).
        """
        f = self.facts
        f.clock = now
        if speech and f.mic_on:
            f.last_activity = now
        if self.uplink.on_frame(pcm, now, self.track.speaking()) and (
                self.records.assembler.open or self.delegations.waiting
                or f.end_at is not None):
            self._on_timeline()

    def on_audio_captured(self, pcm: bytes, now: float, speech: bool = False) -> None:
        """The supervisor's name for a mic frame (:meth:`on_mic_frame`)."""
        self.on_mic_frame(pcm, now, speech)

    # ------------------------------------------------------------- connection inputs

    def on_connection_up(self, now: float) -> None:
        """The WebSocket is open: start the session (``session.start``)."""
        self.facts.clock = now
        self.sessions.on_connection_up(now)
        self._update()

    def on_connection_down(self, reason: str, now: float) -> None:
        """The WebSocket closed or could not open; ``reason`` is a few words."""
        self.facts.clock = now
        self.sessions.on_connection_down(reason, now)
        self._update()

    def on_tick(self, now: float, wall: float) -> None:
        """About once a second: reconnects, the quiet close, timeouts."""
        self.facts.clock = now
        self.sessions.on_tick(now)
        self._update()

    # ------------------------------------------------------------------ tool inputs

    def on_tool_result(self, call_id: str, output: str, now: float) -> None:
        """A tool finished: its result goes to the model as the delegation's commentary."""
        self.facts.clock = now
        if self.delegations.on_result(call_id, output, now):
            self._update()

    # ---------------------------------------------------------------- playback inputs

    def on_playback_stopped(self, now: float, played: Mapping[str, int]) -> None:
        """Answer to :class:`StopPlayback`: samples of each burst the device played.

        Bursts absent from ``played`` were played in full.
        """
        self.facts.clock = now
        self.track.on_stopped(now, played)
        self.records.flush()
        self._update()

    def on_playback_drained(self, now: float) -> None:
        """Everything queued has been played."""
        self.facts.clock = now
        self.track.on_drained(now)
        self.records.flush()
        self._update()

    def on_playback_full(self, item_id: str, refused: int, now: float) -> None:
        """The sink refused ``refused`` samples: that much of the burst is never heard."""
        self.track.on_full(item_id, refused)

    # ------------------------------------------------------------------ server inputs

    def on_server_event(self, ev: lw.ServerEvent, now: float) -> None:
        """Act on one parsed Live server event."""
        self.facts.clock = now
        match ev:
            case lw.OutputAudio():
                if self.track.on_output(ev.pcm, now):
                    self._update()
                return  # ten a second: the state changes only through playback
            case lw.TranscriptDelta():
                self._on_transcript(ev, now)
            case lw.SessionStarted():
                self.sessions.on_started(ev, now)
            case lw.InputMuted():
                self.facts.server_muted = ev.muted
            case lw.DelegationCreated():
                self.delegations.on_created(ev, now)
            case lw.ContextAppended():
                logger.debug("%s placed at %d ms", ev.kind, ev.start_ms)
            case lw.UsageUpdated():
                self.sessions.on_usage(ev)
            case lw.SessionClosed():
                self.sessions.on_closed(ev, now)
            case lw.ServerError():
                self.sessions.on_error(ev, now)
            case lw.Info():
                logger.info("server notice %s: %s", guard.printable(ev.code, 100),
                            guard.printable(ev.message))
            case _:
                logger.debug("ignoring server event %s", guard.printable(ev.type, 100))
        self._update()

    # ------------------------------------------------------------------ internals

    def _user(self, now: float) -> None:
        """A gesture: the clock moves, and it is a sign of conversation."""
        self.facts.clock = now
        self.facts.last_activity = now

    def _on_transcript(self, ev: lw.TranscriptDelta, now: float) -> None:
        if self.facts.phase != "open":
            return  # closing: the conversation was ended or went quiet
        self.facts.last_activity = now
        self.records.on_fragment(ev)
        if ev.role == "user":
            self.delegations.on_words()

    def _on_timeline(self) -> None:
        """The timeline moved: segments close, delegations stop waiting for words."""
        now_ms = self.facts.timeline_ms()
        self.records.advance(now_ms)
        self.delegations.on_timeline(now_ms)
        self._update()

    def _derive(self) -> tuple[State, str]:
        f = self.facts
        if f.fatal is not None:
            return State.ERROR, f.fatal
        if f.device_fault is not None:
            return State.ERROR, f.device_fault
        if not self._devices_ready:
            return State.STARTING, "devices opening"
        if f.phase == "connecting":
            return State.CONNECTING, "opening a Live session"
        if f.phase == "starting":
            return State.CONNECTING, "starting the Live session"
        if f.phase == "waiting":
            return State.CONNECTING, "reconnecting"
        if self.track.speaking():
            return State.SPEAKING, "speaking"
        if self.delegations.calls:
            return State.THINKING, "running " + ", ".join(
                sorted(set(self.delegations.calls.values())))
        if self.delegations.waiting:
            return State.THINKING, "thinking"
        if f.phase == "open" and not f.server_muted:
            return State.LISTENING, "listening"
        return State.READY, "ready"

    def _update(self) -> None:
        f = self.facts
        if f.end_at is not None and not (self.track.speaking() or self.delegations.busy()) and (
                f.end_spoke or f.timeline_ms() >= f.end_at + END_WAIT_MS):
            f.end_at = None  # the goodbye has been heard
            self.on_long_press(f.clock)
            return
        state, detail = self._derive()
        if state != self._state or detail != self._detail:
            self._state, self._detail = state, detail
            self.out.emit(ShowState(state, detail))


__all__ = ["FATAL_ERRORS", "Disconnect", "LiveConversation", "LiveSettings"]
