"""The user's side: mic frames to the server, the backlog, the commit rule, the gate.

Frames are streamed while a session is configured and kept (at most 15 s) until the
server commits them, so words spoken while a connection drops are replayed into the
next session. With manual turns (push to talk, ``turn_detection: none``, client VAD)
the device commits the turn and asks for the reply itself, when it is long enough for
the API (100 ms). Under client VAD the :class:`~voiced.core.speech_gate.SpeechGate`
decides which frames are sent. The user's transcripts become records here.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Final

from voiced import guard, wire
from voiced.core.effects import Record
from voiced.core.emitter import Emitter
from voiced.core.facts import Facts
from voiced.core.history import History
from voiced.core.policy import Policy
from voiced.core.speech_gate import Gated, SpeechGate
from voiced.core.text import bounded
from voiced.transcripts import Transcript

logger = logging.getLogger("voiced.core")

_MAX_UNTRANSCRIBED: Final = 16  # committed turns awaiting their transcription
_MIN_COMMIT_SAMPLES: Final = wire.SAMPLE_RATE // 10  # the API refuses commits under 100 ms
# user speech kept until the server commits it, to replay into a new session after a
# drop; bounded so a long outage with the mic on cannot grow memory
_BACKLOG_SAMPLES: Final = wire.SAMPLE_RATE * 15
_LOG_TEXT: Final = 1000  # characters of a transcript shown in a log line


class Uplink:
    """The user's audio and turns, from the mic to the server's commit."""

    def __init__(self, facts: Facts, out: Emitter, history: History) -> None:
        self.facts = facts
        self.out = out
        self.history = history
        p = facts.policy
        self.gate = SpeechGate(p.client_vad) if p.client_vad else None
        self.speech_active = False  # the server heard speech it has not committed yet
        self.uncommitted = 0  # samples appended since the last commit/clear
        self.backlog: deque[bytes] = deque()  # those frames (and any not yet sent)
        self.backlog_samples = 0
        # committed user turns whose transcription has not come yet (it may come after the
        # reply): a rollover waits for them, or the old session would take them along
        self.untranscribed: OrderedDict[str, None] = OrderedDict()

    @property
    def vad_talking(self) -> bool:
        """Client VAD: the user is in a turn."""
        return self.gate is not None and self.gate.talking

    def mid_turn(self) -> bool:
        """The user is saying something the server has not committed yet."""
        return self.speech_active or (self.facts.policy.turn_detection is None
                                      and self.uncommitted > 0)

    def set_policy(self, policy: Policy) -> None:
        """New settings: the gate follows ``client_vad`` (a turn in progress carries on)."""
        if policy.client_vad is None and self.vad_talking:
            self.vad_end_turn()  # client VAD switched off mid-turn: end the turn
        if policy.client_vad is None:
            self.gate = None
        elif self.gate is None:
            self.gate = SpeechGate(policy.client_vad)
        else:
            self.gate.vad = policy.client_vad

    # ---------------------------------------------------------------- frames

    def gate_frame(self, pcm: bytes, speech: bool, gate: SpeechGate) -> Gated:
        """Client VAD: what the gate makes of one frame (the caller acts on it)."""
        gated = gate.feed(pcm, speech)
        self.facts.counters.vad_samples_held_back += gated.held_back
        return gated

    def stream(self, pcm: bytes) -> None:
        """Keep a frame for a replay, and send it when a session is configured."""
        self._keep(pcm)
        if self.facts.configured:
            self._append(pcm)

    def _append(self, pcm: bytes) -> None:
        self.out.send(wire.audio_append(self.out.eid(), pcm))
        n = len(pcm) // wire.BYTES_PER_SAMPLE
        self.facts.counters.appended_samples += n
        self.uncommitted += n

    def _keep(self, pcm: bytes) -> None:
        self.backlog.append(pcm)
        self.backlog_samples += len(pcm) // wire.BYTES_PER_SAMPLE
        while self.backlog_samples > _BACKLOG_SAMPLES:
            self.backlog_samples -= len(self.backlog.popleft()) // wire.BYTES_PER_SAMPLE
            self.facts.counters.backlog_dropped += 1

    def forget_uncommitted(self) -> None:
        """The server has the turn (or it was dropped): nothing to replay."""
        self.uncommitted = 0
        self.backlog.clear()
        self.backlog_samples = 0

    def replay_backlog(self, *, mic_on: bool, newest: int | None = None) -> None:
        """A new session: send it the user's speech the old one never committed.

        Args:
            mic_on: whether the user still has the mic on (push to talk released while
                away ends the turn after the replay).
            newest: only about this many of the newest samples (None: all of them).
        """
        frames = list(self.backlog)
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
        p = self.facts.policy
        ended = not mic_on if p.client_vad is None else not self.vad_talking
        if p.turn_detection is None and ended:
            # push to talk was released, or the device VAD heard the turn end, while away
            self.end_manual_turn()

    # ---------------------------------------------------------------- turns

    def vad_end_turn(self) -> None:
        """Client VAD: the turn ended (silence, or the VAD was switched off)."""
        if self.gate is not None:
            self.gate.end_turn()
        if self.facts.configured:
            self.facts.counters.vad_turns += 1
            self.end_manual_turn()

    def mic_off(self) -> None:
        """The user switched the mic off: end (or drop) the turn in progress."""
        if self.gate is not None:
            self.gate.reset()
        if not self.facts.configured:
            return  # what was said is in the backlog, for the next session
        if self.facts.policy.turn_detection is None:
            self.end_manual_turn()
        elif self.speech_active:
            # the user switched off mid-sentence: drop the half utterance
            self.out.send({"type": "input_audio_buffer.clear", "event_id": self.out.eid()})
            self.speech_active = False
            self.forget_uncommitted()

    def end_manual_turn(self) -> None:
        """Manual turns: switching the mic off commits the turn and asks for a reply."""
        f = self.facts
        if self.uncommitted >= _MIN_COMMIT_SAMPLES:
            self.out.send({"type": "input_audio_buffer.commit", "event_id": self.out.eid()})
            f.awaiting_reply = True
            if f.active_response is None:
                self.out.send({"type": "response.create", "event_id": self.out.eid()})
            else:  # a cancelled reply is still winding down: ask when it has ended
                f.reply_wanted = True
        elif self.uncommitted:
            logger.info("turn too short to send (%.0f ms); discarded",
                        self.uncommitted * 1000 / wire.SAMPLE_RATE)
            self.out.send({"type": "input_audio_buffer.clear", "event_id": self.out.eid()})
        self.forget_uncommitted()

    # ---------------------------------------------------------------- server events

    def on_committed(self, ev: wire.BufferCommitted) -> None:
        """The server made a user item of the buffer; its transcription is awaited."""
        self.forget_uncommitted()
        self.untranscribed[ev.item_id] = None
        if len(self.untranscribed) > _MAX_UNTRANSCRIBED:
            self.untranscribed.popitem(last=False)

    def on_transcribed(self, ev: wire.InputTranscriptionCompleted) -> None:
        """The user's words: a record, and a turn of the history."""
        self.untranscribed.pop(ev.item_id, None)
        text = bounded(ev.transcript.strip(), self.facts)
        if not text:
            logger.debug("empty user transcript for %s ignored", guard.printable(ev.item_id, 100))
            return
        f = self.facts
        logger.info("user: %s", guard.printable(text, _LOG_TEXT))
        self.history.remember("user", text, f.policy.reseed_turns)
        f.filing.file(f.filing.number, Record(Transcript(
            role="user", text=text, item_id=ev.item_id, conversation_id="",
            metadata={"input_method": "realtime_voice", "model": f.model,
                      "item_id": ev.item_id})))

    def on_transcription_failed(self, ev: wire.InputTranscriptionFailed) -> None:
        """The user's words could not be recognised (nothing is recorded)."""
        self.untranscribed.pop(ev.item_id, None)
        logger.warning("transcription of the user's words failed (item %s): %s",
                       guard.printable(ev.item_id, 100), guard.printable(ev.message))
