"""The conversation core: a sans-I/O state machine composed of its parts.

Inputs are ``on_*`` calls (button gestures, mic frames, server events, playback reports,
connection changes); outputs are effects drained with :meth:`Conversation.take_effects`,
which returns and clears them, like websockets' ``data_to_send()``. Nothing here awaits,
sleeps, reads a clock, or touches a socket, a device or a file, so every behaviour is
tested synchronously. Time comes in as an argument: every input that depends on time
takes ``now`` (monotonic seconds), and the tick also the wall clock.

The conversation composes four parts, each with its own ledger: :class:`Replies` (the
assistant's items, playback, truncation, records), :class:`Uplink` (the user's audio,
backlog, commits, speech gate, transcripts), :class:`Calls` (tools) and
:class:`Rollover` (the standby session); the facts they share are in :class:`Facts`.
The state shown to people (contract §3) is *derived* from those facts after every
input, never stored, so it cannot drift from them:

    error > starting > connecting > speaking > thinking > listening > ready

Everything a server event can make the core hold is bounded (docs/architecture.md,
"Hostile input"); text that reaches a record or the history is valid Unicode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from voiced import guard, wire
from voiced.core.calls import Calls
from voiced.core.effects import Effect, MicOpened, Reconnect, ShowState, State
from voiced.core.emitter import Emitter
from voiced.core.facts import Counters, Facts
from voiced.core.filing import Filing
from voiced.core.history import History
from voiced.core.policy import Policy
from voiced.core.replies import Replies
from voiced.core.rollover import FATAL_ERRORS, Progress, Rollover
from voiced.core.setup import Setup
from voiced.core.uplink import Uplink

logger = logging.getLogger("voiced.core")

# at a rollover at a quiet moment, the newest mic audio is replayed into the new session
# too: the user may have begun a word the old session's VAD had not yet noticed
_ONSET_SAMPLES: Final = wire.SAMPLE_RATE // 2
_QUIET_ERRORS: Final = frozenset({"response_cancel_not_active"})


class Conversation:
    """The voice conversation, as a pure state machine.

    Args:
        policy: behaviour switches from the configuration.
        conversation_id: the id transcripts carry until a long press starts a new one;
            None (behind a relay only) lets the relay name the conversation.
        new_id: makes a fresh conversation id (a UUID in production, a counter in tests).
    """

    def __init__(self, policy: Policy, *, conversation_id: str | None,
                 new_id: Callable[[], str]) -> None:
        self.out = Emitter()
        self.filing = Filing(self.out, conversation_id, new_id,
                             relay_names=policy.behind_relay)
        self.facts = Facts(policy=policy, filing=self.filing)
        self.setup = Setup()
        self.history = History()
        self.replies = Replies(self.facts, self.out, self.history)
        self.uplink = Uplink(self.facts, self.out, self.history)
        self.calls = Calls(self.facts, self.out)
        self.rollover = Rollover(self.facts, self.out, self.history)
        self._state = State.STARTING
        self._detail = "devices opening"
        # the facts only the state depends on
        self._devices_ready = False
        self._fatal: str | None = None
        self._device_fault: str | None = None
        self._connected = False
        self._mic_on = False
        self._conn_detail = "not connected"
        self._end_pending = False  # end the conversation once the reply has been heard

    # ------------------------------------------------------------------ public reads

    @property
    def policy(self) -> Policy:
        """The policy in force."""
        return self.facts.policy

    @property
    def conversation_id(self) -> str | None:
        """The conversation's id (sent to a relay); None until a relay names it."""
        return self.filing.current

    @property
    def counters(self) -> Counters:
        """What the core counts."""
        return self.facts.counters

    @property
    def expires_at(self) -> float | None:
        """When the live session expires (epoch seconds), if the server said."""
        return self.rollover.expires_at

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
        return self.facts.configured

    @property
    def awaiting_relay(self) -> bool:
        """The session answers, but the relay has not yet passed the device's update on.

        The supervisor then gives the set-up longer than ``connect_timeout_s``.
        """
        return not self.facts.configured and self.setup.waits_for_fence

    @property
    def standby(self) -> Progress | None:
        """The standby session's progress: None, "opening", "configuring" or "ready"."""
        return self.rollover.standby

    def status(self) -> dict[str, Any]:
        """The contract's status fields this core knows (the supervisor adds the rest)."""
        c = self.counters
        return {
            "state": str(self._state),
            "detail": self._detail,
            "mic": "on" if self._mic_on else "off",
            "connected": self.facts.configured,
            "conversation_id": self.conversation_id,
            "session_expires_at": self.expires_at,
            "audio_sent_ms": round(c.appended_samples * 1000 / wire.SAMPLE_RATE),
            "interruptions": c.interruptions,
            "server_errors": c.server_errors,
            "playback_underruns": c.underruns,
            "tool_calls": c.tool_calls,
            "pending_items": len(self.replies.items),
            "transcript_bytes": self.transcript_bytes(),
            "playback_overflows": c.playback_overflows,
        }

    def transcript_bytes(self) -> int:
        """UTF-8 bytes of assistant transcript text held (partial and whole)."""
        return self.replies.transcript_bytes()

    def take_effects(self) -> list[Effect]:
        """Return the effects produced since the last call, and forget them."""
        return self.out.take()

    # ---------------------------------------------------------------- lifecycle inputs

    def set_policy(self, policy: Policy) -> None:
        """New settings (SIGHUP); session-level ones apply from the next session."""
        self.uplink.set_policy(policy)
        self.facts.policy = policy
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
        self.facts.session_no += 1
        self._connected = True
        self.facts.configured = False
        self.setup.begin(self.facts.policy)
        self._conn_detail = "waiting for session.created"
        self._update()

    def on_connection_down(self, reason: str) -> None:
        """The WebSocket closed or failed; ``reason`` is a few words for STATUS=.

        Queued reply audio keeps playing (it is already here); the response it belonged
        to is over, and its transcript is recorded when playback ends.
        """
        self._connected = False
        self.facts.configured = False
        self._conn_detail = reason
        self.facts.awaiting_reply = False
        self.uplink.speech_active = False
        self.uplink.uncommitted = 0
        self._leave_session("the session ended")
        self._close_every_response()
        self.replies.discarded.clear()  # their late events cannot come on another connection
        self.rollover.close("the live session ended")
        self._update()

    def on_stopping(self) -> None:
        """The daemon stops: transcripts waiting for the relay's name are filed now."""
        self.filing.release()

    def on_tick(self, now: float, wall: float) -> None:
        """About once a second; ``wall`` is epoch seconds, to compare with expires_at.

        Sessions end after 60 minutes; :class:`Rollover` prepares the next one in time.
        Items no event touched for a minute are closed.
        """
        self.rollover.wall = wall
        self.facts.clock = now
        if self.replies.close_stale(now):
            self._update()
        if self.rollover.tick(now):
            self._maybe_switch()

    # ------------------------------------------------------------- standby session

    def on_standby_up(self) -> None:
        """The standby connection is open; its ``session.created`` is awaited."""
        self.rollover.on_up()

    def on_standby_down(self, reason: str, now: float) -> None:
        """The standby connection failed or closed before the switch; retried later."""
        self.rollover.on_down(reason, now)

    def on_standby_event(self, ev: wire.ServerEvent, now: float) -> None:
        """An event on the standby connection: configure and re-seed it, then switch."""
        if self.rollover.standby is None:
            return
        if isinstance(ev, wire.RelayConversationCreated):
            self.filing.adopt(ev.conversation_id)  # it opened without an id: none was known
            return
        if self.rollover.on_event(ev, now):
            self._maybe_switch()
        self._update()

    def _busy(self) -> bool:
        """Someone is talking, or a reply is on its way: not the moment to switch."""
        f = self.facts
        return (self.replies.speaking() or f.awaiting_reply or self.uplink.mid_turn()
                or f.active_response is not None or bool(self.calls.calls)
                or self.uplink.vad_talking or self._end_pending
                or bool(self.uplink.untranscribed))

    def _maybe_switch(self) -> None:
        if self.rollover.switch_due(self._busy()):
            self._switch()

    def _leave_session(self, why: str) -> None:
        """What was pending in this session goes with it.

        A new one cannot take a tool's answer, a reply to a turn it never got, or that
        turn's transcription.
        """
        self.calls.cancel(why)
        self.facts.reply_wanted = False
        self.uplink.untranscribed.clear()

    def _switch(self) -> None:
        if self.uplink.untranscribed:  # forced: no quiet moment came
            logger.warning("moving on before %d user turn(s) were transcribed; their words "
                           "are not recorded", len(self.uplink.untranscribed))
        # a forced switch (quiet moment never came) cuts running calls: their outputs go
        # to the old session, the one that knows the call ids, before the switch
        self._leave_session("the session rolled over")
        self.facts.session_no += 1
        self.rollover.switch()
        if self.facts.active_response is not None:
            self._close_response(self.facts.active_response)  # forced: the reply is cut
        self.facts.awaiting_reply = False
        # the old session never committed this audio: the new one hears it again
        mid_turn = self.uplink.mid_turn()
        self.uplink.speech_active = False
        self.uplink.uncommitted = 0
        self.uplink.replay_backlog(mic_on=self._mic_on,
                                   newest=None if mid_turn else _ONSET_SAMPLES)

    # -------------------------------------------------------------------- user inputs

    def on_press(self, now: float) -> None:
        """A short press (or `voiced ctl press`): toggle the mic, interrupting first."""
        if self.replies.speaking() or self.calls.running():
            self._interrupt(cancel=True)
            self._set_mic(True)
        else:
            self._set_mic(not self._mic_on)
        self._update()

    def on_long_press(self, now: float) -> None:
        """End this conversation and start a fresh one (a new Realtime session)."""
        self._end_pending = False
        self.facts.reply_wanted = False
        if self.replies.speaking() or self.calls.running():
            self._interrupt(cancel=True)
        self._set_mic(False)
        # what is left of the old conversation closes with its connection (Reconnect);
        # until then its interrupted response stays discarded
        self.filing.next_conversation()
        self.history.clear()
        self.uplink.forget_uncommitted()
        logger.info("starting a new conversation %s", self.conversation_id
                    or "(the relay names it)")
        self.out.emit(Reconnect("new conversation"))
        self._update()

    def on_interrupt(self, now: float) -> None:
        """`voiced ctl interrupt`: stop the assistant if it is speaking (or a tool runs)."""
        if self.replies.speaking() or self.calls.running():
            self._interrupt(cancel=True)
            self._update()

    def on_talk_start(self, now: float) -> None:
        """Push to talk: the button went down."""
        if self.replies.speaking():
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
        f = self.facts
        if f.policy.half_duplex and (f.queued or now < f.mute_until):
            # NOTE: half duplex keeps the assistant from hearing itself through the speaker
            f.counters.frames_muted += 1
            return
        gate = self.uplink.gate
        if gate is None:
            self.uplink.stream(pcm)
            return
        gated = self.uplink.gate_frame(pcm, speech, gate)
        if gated.started:
            logger.info("speech detected on the device")
            if self.replies.speaking():  # full duplex: the user talks over the reply
                logger.info("barge-in: user speech while speaking")
                self._interrupt(cancel=True)
            self.calls.cancel("the user spoke again")
        for frame in gated.send:
            self.uplink.stream(frame)
        if gated.ended:
            self.uplink.vad_end_turn()
        self._update()

    # ------------------------------------------------------------------- tool inputs

    def on_tool_result(self, call_id: str, output: str, now: float) -> None:
        """A tool finished; ``output`` (JSON text, a result or an error) goes to the model.

        Once every call of the response has its output and no response is active, one
        ``response.create`` asks for the spoken answer.
        """
        if not self.calls.on_result(call_id, output):
            return
        self.calls.maybe_answer()
        self._update()

    def mute_mic(self) -> None:
        """A tool switched the microphone off (the button switches it on again)."""
        self._set_mic(False)
        self._update()

    def end_conversation(self) -> None:
        """A tool ended the conversation: a new one starts once the reply was heard."""
        self._end_pending = True

    # ---------------------------------------------------------------- playback inputs

    def on_playback_stopped(self, now: float, played: Mapping[str, int]) -> None:
        """Answer to :class:`StopPlayback`: samples of each item the device really played.

        Sinks report only items that still had audio queued, so an item absent from
        ``played`` was heard in full. Sends the truncation that tells the server what
        the user actually heard.
        """
        self.replies.on_playback_stopped(now, played)
        self._update()

    def on_playback_full(self, item_id: str, refused: int, now: float) -> None:
        """The sink refused ``refused`` samples of reply audio: it holds its maximum.

        The reply runs further ahead of playback than ``audio.max_queued_s`` (a server
        streaming without end, or far faster than real time). The rest of it is cancelled;
        what was queued plays out, and then the server is told where the user stopped
        hearing (truncate), as after an interruption, so the model knows.
        """
        if self.replies.on_playback_full(item_id, refused):
            self._update()

    def on_playback_drained(self, now: float) -> None:
        """Everything queued has been played (the device consumed it)."""
        self.replies.on_playback_drained(now)
        self._update()

    # ------------------------------------------------------------------ server inputs

    def on_server_event(self, ev: wire.ServerEvent, now: float) -> None:
        """Act on one parsed server event."""
        f = self.facts
        f.clock = now
        match ev:
            case wire.AudioDelta():
                self.replies.on_audio_delta(ev, devices_down=self._device_fault is not None)
            case wire.SessionCreated():
                self.rollover.expires_at = self.rollover.plausible_expiry(ev.expires_at)
                self._conn_detail = "configuring session"
                self.setup.on_created(ev, f.policy, self.out)
                f.session_model = self.setup.model
                if self.history:
                    logger.info("re-seeding the new session with %d earlier turn(s)",
                                len(self.history))
                for role, text in self.history:
                    self.out.send(wire.text_item(self.out.eid(), role, text))
            case wire.SessionUpdated():
                if self.setup.on_updated(ev):
                    self._on_configured()
                f.session_model = self.setup.model
            case wire.BufferCleared():
                if self.setup.on_cleared():
                    self._on_configured()
            case wire.SpeechStarted():
                self.uplink.speech_active = True
                self.calls.cancel("the user spoke again")
                if self.replies.speaking():
                    # the server heard the user over the reply; with interrupt_response it
                    # has cancelled the response itself, so only stop and truncate
                    logger.info("barge-in: user speech while speaking")
                    self._interrupt(cancel=False)
            case wire.SpeechStopped():
                self.uplink.speech_active = False
                f.awaiting_reply = True
            case wire.BufferCommitted():
                self.uplink.on_committed(ev)
            case wire.InputTranscriptionCompleted():
                self.uplink.on_transcribed(ev)
            case wire.InputTranscriptionFailed():
                self.uplink.on_transcription_failed(ev)
            case wire.ResponseCreated():
                f.active_response = ev.response_id
                f.awaiting_reply = True
            case wire.ResponseDone():
                self.replies.on_response_done(ev)
                self._close_response(ev.response_id)
            case wire.AudioDone():
                self.replies.on_audio_done(ev)
            case wire.AudioTranscriptDone() | wire.AudioTranscriptDelta():
                self.replies.on_transcript(ev)
            case wire.FunctionCallDone():
                self.calls.on_call(ev, self.replies.discarded)
            case wire.ItemTruncated():
                logger.debug("server truncated %s at %d ms", guard.printable(ev.item_id, 100),
                             ev.audio_end_ms)
            case wire.ServerError():
                self._on_error(ev)
            case wire.RelayConversationCreated():
                self.filing.adopt(ev.conversation_id)
            case _:  # wire.Unhandled, the only type left
                logger.debug("ignoring server event %s", guard.printable(ev.type, 100))
        self._update()

    # ------------------------------------------------------------------ internals

    def _set_mic(self, on: bool) -> None:
        if on == self._mic_on:
            return
        self._mic_on = on
        logger.info("microphone %s", "on" if on else "off")
        if on:
            self.out.emit(MicOpened())
            return
        self.uplink.mic_off()

    def _interrupt(self, *, cancel: bool) -> None:
        """Stop playback now; truncation follows in :meth:`on_playback_stopped`."""
        self.counters.interruptions += 1
        self.calls.cancel("interrupted")
        self.replies.interrupt(cancel=cancel)

    def _on_configured(self) -> None:
        """The session answered the device's session.update (core/setup.py)."""
        if self.facts.configured:
            return  # a later session.update (none today) changes nothing here
        self.facts.configured = True
        self._conn_detail = "connected"
        audio = (self.setup.updated or {}).get("audio")
        fmt = audio.get("output", {}).get("format") if isinstance(audio, dict) else None
        logger.info("session configured (output format %s)", guard.printable(fmt, 200))
        self.uplink.replay_backlog(mic_on=self._mic_on)

    def _close_response(self, response_id: str) -> None:
        """The response is over: record what we can; ask for a reply that waited for it."""
        f = self.facts
        self.replies.close_response(response_id)
        if f.reply_wanted and f.active_response is None and f.configured:
            f.reply_wanted = False
            self.out.send({"type": "response.create", "event_id": self.out.eid()})
            f.awaiting_reply = True
        self.calls.maybe_answer()

    def _close_every_response(self) -> None:
        """Every response with items still open is over: its session or conversation ended.

        Audio still queued plays out; the rest is recorded or forgotten now.
        """
        if self.facts.active_response is not None:
            self._close_response(self.facts.active_response)
        for response_id in self.replies.open_responses():
            self._close_response(response_id)

    def _on_error(self, ev: wire.ServerError) -> None:
        self.counters.server_errors += 1
        about = self.out.about(ev.event_id)
        where = f" (in reply to {about} {ev.event_id})" if about else ""
        if self.setup.on_error(ev):  # the refused fence still says where the updates end
            self._on_configured()
        if ev.code in _QUIET_ERRORS:
            logger.debug("server: %s%s", ev.code, where)
            return
        param = f" [param {guard.printable(ev.param, 100)}]" if ev.param else ""
        logger.warning("server error %s: %s%s%s", guard.printable(ev.code or ev.type, 100),
                       guard.printable(ev.message), param, where)
        if ev.code in FATAL_ERRORS and self.facts.configured:
            # the session works: a refused key or model ends the connection (close 3000
            # or 4000), which is what decides; an error event alone must not show `error`
            logger.warning("the session goes on; not treated as fatal")
        elif ev.code in FATAL_ERRORS:
            self._fatal = (f"the server refused the session: {ev.code}"
                           + (": check the API key" if ev.code == "invalid_api_key" else ""))
        elif ev.code == "session_expired":
            if self.rollover.standby == "ready":
                logger.info("moving to the next session at once")
                self._switch()
            else:
                self.out.emit(Reconnect("session expired"))

    def _derive(self) -> tuple[State, str]:
        if self._fatal is not None:
            return State.ERROR, self._fatal
        if self._device_fault is not None:
            return State.ERROR, self._device_fault
        if not self._devices_ready:
            return State.STARTING, "devices opening"
        if not self.facts.configured:
            return State.CONNECTING, self._conn_detail
        if self.replies.speaking():
            return State.SPEAKING, "speaking"
        if self.calls.running():
            return State.THINKING, f"running {self.calls.running_names()}"
        if self.facts.awaiting_reply:
            return State.THINKING, "thinking"
        if self._mic_on:
            return State.LISTENING, "listening"
        return State.READY, "ready"

    def _update(self) -> None:
        f = self.facts
        if self._end_pending and not (self.replies.speaking() or f.awaiting_reply
                                      or self.calls.calls or f.active_response is not None
                                      or f.queued):
            self._end_pending = False  # the goodbye has been heard
            self.on_long_press(0.0)
            return
        state, detail = self._derive()
        if state != self._state or detail != self._detail:
            self._state, self._detail = state, detail
            self.out.emit(ShowState(state, detail))
