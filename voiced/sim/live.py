"""One GPT-Live connection of `voiced sim` (``/v1/live/sessions``), as the service behaves.

What it does, after the protocol notes' list of what a faithful simulator must do
(docs/architecture.md, "GPT-Live backend"):

- Nothing is sent before ``session.start``; any other client event before it is
  answered with an ``error`` (``session_not_started``). Unknown types and fields are
  refused like the service (``unknown_parameter``, the dotted path as ``param``).
- ``session.started`` carries the whole resource: ``live_…`` id, ``expires_at`` from the
  simulator's clock, model, ``status: "active"``, the resolved audio format, voice and
  delegation, and the startup ``input``.
- The session's timeline is its input audio: every 100 ms of it (counted in bytes, never
  in wall time) lets out one 100 ms ``session.output_audio.delta`` (zeros when the
  model is quiet, no ids, no timestamps). A client that stops streaming freezes it.
- The model hears the input (silence while muted or while a fixture plays) through an
  energy VAD. When the user falls silent it recognises the words (pocketsphinx when
  installed), sends them as ``session.input_transcript.delta`` fragments on the 200 ms
  grid, and answers: speech (espeak-ng when installed) with output transcript fragments
  sent as that audio goes out. Speech over the model's stops the model.
- Client delegation: when the user's words hold a word of a ``Delegate: a, b`` line of the
  instructions (the same convention as the Realtime simulator's ``Say:``), the model
  delegates (``session.delegation.created``), speaks an automatic acknowledgement after
  ``acknowledgement_delay_ms`` unless commentary or thinking came first, and speaks the
  commentary appended for that delegation once it is placed (600 ms of timeline later,
  ``session.commentary.appended``). Responses delegation is simulated too: a function
  tool the user names is called through ``response.event`` envelopes and its output,
  given back with ``response.item.create`` and ``response.create``, is spoken.
  Decisions delegation and triggers are refused as not simulated.
- ``session.usage.updated`` every 15 s of timeline (the seconds are timeline seconds);
  ``session.close`` → one ``context_injection_incomplete`` error per append not yet
  placed, ``session.closed`` (``close_requested``, final usage), close 1000; at
  ``expires_at`` ``session.closed`` with ``expired``.
- Faults from :class:`~voiced.sim.server.SimServer`: a drop halfway through a reply,
  refused connections, expiry now, a stall, malformed and unknown frames.

This connection runs the protocol flow; its parts are :mod:`~voiced.sim.live_resource`
(what ``session.start``/``session.update`` may hold), :mod:`~voiced.sim.live_ears` (the
input VAD), :mod:`~voiced.sim.live_track` (the output stream and its timed words),
:mod:`~voiced.sim.live_context` (context appends, client delegations) and
:mod:`~voiced.sim.live_backend` (Responses delegation).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from voiced.sim import live_fields, voice
from voiced.sim.connection import Connection
from voiced.sim.fields import unknown_field
from voiced.sim.live_backend import ResponsesBackend
from voiced.sim.live_context import Context
from voiced.sim.live_ears import Ears
from voiced.sim.live_resource import resource, updated_delegation
from voiced.sim.live_track import BYTES_PER_MS, Track, timed_pieces
from voiced.sim.responses import _SAY, ClientMistake, new_id

if TYPE_CHECKING:
    from voiced.sim.server import SimServer

logger = logging.getLogger(__name__)

USAGE_EVERY_MS = 15_000
MAX_FIXTURE_S = 30
ACKNOWLEDGEMENT = "Okay, one moment."
_DELEGATE = re.compile(r"^\s*delegate:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


class LiveSession(Connection):
    """One client connection to ``/v1/live/sessions``; keeps what tests inspect."""

    MALFORMED = '{"type": "session.output_audio.delta", "delta": 12'

    def __init__(self, ws: ServerConnection, server: SimServer) -> None:
        super().__init__(ws, server.options)
        self.server = server
        self.clock = server.clock
        self.index = len(server.live_sessions)  # the n-th Live connection of the server
        self.session: dict[str, Any] | None = None  # the resource, once started
        self.received: list[dict[str, Any]] = []
        """Every client event, audio replaced by ``"<N characters>"``."""
        self.sent: list[dict[str, Any]] = []
        """Every event written, output audio as ``{"type", "bytes", "loud"}``."""
        self.heard: list[str] = []  # what the model recognised, utterance by utterance
        self.timeline = 0  # input audio bytes: the session's clock
        self.track = Track()  # the output stream: what the model (or a fixture) says
        self.muted = False
        self.closed = False
        self.ended_at: float | None = None
        self._opened = self.clock.time()
        self.context = Context(self)
        self.backend = ResponsesBackend(self)
        self._next_usage = USAGE_EVERY_MS * BYTES_PER_MS
        self.ears = Ears()
        self._hearing = asyncio.Lock()  # utterances are answered one after the other
        faults = self.opts.expire_at_input_ms
        self._expire_at_ms = faults[self.index] if self.index < len(faults) else None

    # ----------------------------------------------------------------- properties

    @property
    def input_ms(self) -> float:
        """The timeline: milliseconds of input audio received."""
        return self.timeline / BYTES_PER_MS

    @property
    def speaking(self) -> bool:
        """The model (or a fixture) has output audio queued."""
        return bool(self.track.speaker)

    @property
    def said(self) -> list[str]:
        """What the model spoke, in order."""
        return self.track.said

    @property
    def delegation(self) -> dict[str, Any]:
        """The session's delegation settings (client until it started)."""
        return (self.session or {}).get("delegation") or {"type": "client"}

    # ----------------------------------------------------------------- output

    def emit(self, event: dict[str, Any]) -> None:
        """Queue a server event for the writer (with an event_id, audio deltas aside)."""
        if event["type"] != "session.output_audio.delta":
            event = {"event_id": new_id("event"), **event}
        self._out.put_nowait(("event", event))

    def _error(self, code: str, message: str, *, param: str | None = None,
               event_id: str | None = None, etype: str = "invalid_request_error") -> None:
        error: dict[str, Any] = {"type": etype, "code": code, "message": message}
        if param is not None:
            error["param"] = param
        if event_id is not None:
            error["client_event_id"] = event_id
        self.emit({"type": "error", "error": error,
                   **({"client_event_id": event_id} if event_id is not None else {})})

    def _written(self, payload: Any) -> str:
        self.sent.append(_summary(payload))
        return json.dumps(payload)

    # ----------------------------------------------------------------- session end

    def _usage(self) -> dict[str, Any]:
        return {"seconds": int(self.input_ms // 1000)}

    def _end(self, reason: str, event_id: str | None = None) -> None:
        """session.closed (after the placement errors a close reports), then close 1000."""
        if self.closed or self.session is None:
            return
        self.closed = True
        for p in self.context.unplaced():
            self._error("context_injection_incomplete",
                        f"The {p.kind} append was not placed on the timeline before the "
                        "session closed.", event_id=p.event_id)
        self.emit({"type": "session.closed", "reason": reason, "usage": self._usage(),
                   "session": self.session,
                   **({"client_event_id": event_id} if event_id is not None else {})})
        self._out.put_nowait(("close", (1000, "")))

    def expire(self) -> None:
        """End the session as the service does at ``expires_at``."""
        self._end("expired")

    async def _expire_later(self, when: float) -> None:
        await self.clock.sleep_until(when)
        self.expire()

    async def _stall_later(self, delay: float) -> None:
        await self.clock.sleep_until(self._opened + delay)
        self.stall()

    # ----------------------------------------------------------------- input

    async def run(self) -> None:
        """Serve this connection until it closes."""
        writer = asyncio.get_running_loop().create_task(self._writer())
        if self.opts.stall_after_s is not None:
            self._spawn(self._stall_later(self.opts.stall_after_s))
        try:
            async for frame in self.ws:
                if not self.closed:
                    self._on_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            self.ended_at = time.monotonic()
            for t in [*self._tasks, writer]:
                t.cancel()

    def _on_frame(self, frame: str | bytes) -> None:
        decoded = self._client_event(frame)
        if decoded is None:
            return
        ev, event_id = decoded
        self.received.append({k: (f"<{len(v)} characters>" if k == "audio" and isinstance(
            v, str) else v) for k, v in ev.items()})
        kind = ev["type"]
        handler = _HANDLERS.get(kind)
        if handler is None:
            self._error("invalid_value", f"Invalid value: '{kind}'. Supported values are: "
                        + ", ".join(_HANDLERS), param="type", event_id=event_id)
            return
        if self.session is None and kind != "session.start":
            self._error("session_not_started", "Send session.start and wait for "
                        "session.started before other events.", event_id=event_id)
            return
        unknown = unknown_field(ev, live_fields.CLIENT_EVENTS[kind], "")
        if unknown is not None:
            self._error("unknown_parameter", f"Unknown parameter: '{unknown}'.",
                        param=unknown, event_id=event_id)
            return
        try:
            handler(self, ev, event_id)
        except ClientMistake as m:
            self._error(m.code, m.message, param=m.param, event_id=event_id, etype=m.etype)
        except (TypeError, AttributeError, ValueError, KeyError) as e:
            logger.warning("simulator: %s refused: %r", kind, e)
            self._error("invalid_type", f"Invalid type in '{kind}': {e}", event_id=event_id)

    # ----------------------------------------------------------------- session

    def on_start(self, ev: dict[str, Any], event_id: str | None) -> None:
        """Check the configuration, resolve its defaults and start the session."""
        if self.session is not None:
            raise ClientMistake("session_already_started", "The session has already started.")
        self.session = resource(ev, self.clock.time() + self.opts.max_session_s)
        self.emit({"type": "session.started", "session": self.session,
                   **({"client_event_id": event_id} if event_id is not None else {})})
        self._spawn(self._expire_later(self.session["expires_at"]))

    def on_update(self, ev: dict[str, Any], event_id: str | None) -> None:
        """Delegation settings and triggers only; the delegation type is fixed."""
        assert self.session is not None
        s = ev.get("session")
        if not isinstance(s, dict):
            raise ClientMistake.missing("session")
        self.session["delegation"] = updated_delegation(self.delegation, s)
        self.emit({"type": "session.updated", "session": self.session,
                   **({"client_event_id": event_id} if event_id is not None else {})})

    def on_close(self, ev: dict[str, Any], event_id: str | None) -> None:
        """The client ends the session."""
        self._end("close_requested", event_id)

    # ----------------------------------------------------------------- audio in

    def on_append(self, ev: dict[str, Any], event_id: str | None) -> None:
        """Input audio: the timeline moves on, the model hears it, output comes out."""
        try:
            pcm = base64.b64decode(str(ev.get("audio", "")), validate=True)
        except binascii.Error:
            raise ClientMistake("invalid_value", "Invalid 'audio'. Expected base64.",
                                "audio") from None
        if len(pcm) % 2:
            raise ClientMistake("invalid_value", "Invalid 'audio': PCM16 has an even number "
                                "of bytes.", "audio")
        fixture = self.track.fixture_playing()
        heard = bytes(len(pcm)) if self.muted or fixture else pcm  # muted: silence
        self.timeline += len(pcm)
        started, utterances = self.ears.feed(heard)
        if started and self.track.model_speaking():
            logger.info("simulated model: the user talks over it; it stops")
            self.track.stop()
        for utterance in utterances:
            self._spawn(self._hear(*utterance))
        self._tick()

    def on_mute(self, ev: dict[str, Any], event_id: str | None) -> None:
        """Mute: the model hears silence from now on; acknowledged."""
        self.muted = ev["type"] == "session.input_audio.mute"
        self.emit({"type": "session.input_audio.muted" if self.muted
                   else "session.input_audio.unmuted",
                   **({"client_event_id": event_id} if event_id is not None else {})})

    # ----------------------------------------------------------------- the timeline

    def _tick(self) -> None:
        """Everything due at the current input position, in order."""
        while self.track.out_pos // BYTES_PER_MS <= self.input_ms and not self.closed:
            self._output_frame()
        for _ in range(self.context.place_due()):  # acknowledgements due
            self._spawn(self._speak(ACKNOWLEDGEMENT, reply=False))
        if self.timeline >= self._next_usage:
            self._next_usage += USAGE_EVERY_MS * BYTES_PER_MS
            self.emit({"type": "session.usage.updated", "usage": self._usage(),
                       "context_window": {"usage_ratio": round(self.input_ms / 3.6e6, 4)}})
        if self._expire_at_ms is not None and self.input_ms >= self._expire_at_ms:
            self._expire_at_ms = None
            self.expire()

    def _output_frame(self) -> None:
        t = self.track
        self.emit({"type": "session.output_audio.delta",
                   "delta": base64.b64encode(t.frame()).decode()})
        for text, start_ms, end_ms in t.words_out():
            self.emit({"type": "session.output_transcript.delta", "delta": text,
                       "start_ms": start_ms, "end_ms": end_ms})
        while t.speeches:
            speech = t.speeches[0]
            if speech.reply and not speech.half_checked and \
                    t.out_pos >= (speech.start + speech.end) // 2:
                speech.half_checked = True
                if self.server.take_drop():
                    logger.info("fault: dropping the connection mid-reply")
                    self.closed = True
                    self.abort()
                    return
            if speech.end > t.out_pos:
                break
            t.speeches.popleft()
            if speech.fixture is not None:
                self.emit({"type": "session.output_audio.fixture.played",
                           **({"client_event_id": speech.fixture} if speech.fixture else {})})

    def say_when_heard(self, text: str) -> None:
        """Say what must be said (commentary, a backend's answer) once the user is quiet."""
        self._spawn(self._speak(text, reply=True, wait=True))

    async def _speak(self, text: str, *, reply: bool, wait: bool = False) -> None:
        """Say ``text`` once it is synthesised.

        A reply the user talks over is dropped (their next words get the answer); what
        must be said (``wait``: commentary, a backend's answer) waits until they stop.
        """
        pcm = await asyncio.to_thread(voice.speak, text)
        if wait:
            await self.ears.quiet.wait()
        if self.closed:
            return
        if reply and self.ears.speech_on is not None:
            logger.info("simulated model: the user is talking again; not answering yet")
            return
        self.track.enqueue(pcm, text, reply=reply)

    # ----------------------------------------------------------------- the model

    async def _hear(self, pcm: bytes, start_ms: int, end_ms: int) -> None:
        async with self._hearing:
            if self.opts.transcript is not None:
                text = self.opts.transcript
            else:
                text = (await asyncio.to_thread(voice.transcribe, pcm))[0]
            text = text.strip()
            if not text or self.closed:
                return
            self.heard.append(text)
            for piece, s, e in timed_pieces(text, start_ms, end_ms):
                self.emit({"type": "session.input_transcript.delta", "delta": piece,
                           "start_ms": s, "end_ms": e})
            await self._respond(text, end_ms)

    def _delegate_words(self) -> list[str]:
        instructions = str((self.session or {}).get("instructions") or "")
        words = [w.strip().lower() for line in _DELEGATE.findall(instructions)
                 for w in line.split(",")]
        return [w for w in [*words, *self.opts.delegate_words] if w]

    async def _respond(self, heard: str, at_ms: int) -> None:
        lowered = f" {re.sub(r'[^a-z0-9]+', ' ', heard.lower())} "
        asked = any(f" {w} " in lowered for w in self._delegate_words())
        if self.delegation["type"] == "responses":
            tool = self.backend.named_tool(lowered)
            if tool is not None or asked:
                self.backend.delegate(heard, at_ms, tool)
                return
        elif asked:
            self.context.delegate_to_client(at_ms)
            return
        instructions = str((self.session or {}).get("instructions") or "")
        said = _SAY.search(instructions)
        await self._speak(said.group(1) if said else self.opts.reply(heard), reply=True)

    def on_append_context(self, ev: dict[str, Any], event_id: str | None) -> None:
        """Context appends (instructions, thinking, commentary): placed 600 ms later."""
        self.context.on_append(ev, event_id)

    # ----------------------------------------------------------------- fixtures

    def on_fixture(self, ev: dict[str, Any], event_id: str | None) -> None:
        """Play client audio: it interrupts the model and mutes the input while it plays."""
        try:
            pcm = base64.b64decode(str(ev.get("audio", "")), validate=True)
        except binascii.Error:
            raise ClientMistake("invalid_value", "Invalid 'audio'. Expected base64.",
                                "audio") from None
        if len(pcm) % 2 or not pcm or len(pcm) > MAX_FIXTURE_S * 1000 * BYTES_PER_MS:
            raise ClientMistake("invalid_value", f"A fixture is PCM16 at 24 kHz, at most "
                                f"{MAX_FIXTURE_S} s.", "audio")
        if self.track.fixture_playing():
            raise ClientMistake("fixture_active", "A fixture is already playing.")
        self.track.stop()
        self.emit({"type": "session.output_audio.fixture.playing",
                   **({"client_event_id": event_id} if event_id is not None else {})})
        self.track.enqueue(pcm, "", reply=False, fixture=event_id or "")

    def on_response_item(self, ev: dict[str, Any], event_id: str | None) -> None:
        """A function call's output for the backend (Responses delegation only)."""
        self.backend.on_item(ev)

    def on_response_create(self, ev: dict[str, Any], event_id: str | None) -> None:
        """Continue the backend once every open call has its output."""
        self.backend.on_create(ev)

    def on_decision(self, ev: dict[str, Any], event_id: str | None) -> None:
        """Decisions are not simulated: refused in so many words."""
        raise ClientMistake("invalid_value", "voiced sim does not simulate Decisions.")


def _summary(event: dict[str, Any]) -> dict[str, Any]:
    """What :attr:`LiveSession.sent` keeps of an event (not the audio of output deltas)."""
    if event["type"] != "session.output_audio.delta":
        return event
    pcm = base64.b64decode(event["delta"])
    return {"type": event["type"], "bytes": len(pcm), "loud": any(pcm)}


_Handler = Callable[[LiveSession, dict[str, Any], "str | None"], None]
_HANDLERS: dict[str, _Handler] = {
    "session.start": LiveSession.on_start,
    "session.update": LiveSession.on_update,
    "session.input_audio.append": LiveSession.on_append,
    "session.input_audio.mute": LiveSession.on_mute,
    "session.input_audio.unmute": LiveSession.on_mute,
    "session.output_audio.fixture.play": LiveSession.on_fixture,
    "session.instructions.append": LiveSession.on_append_context,
    "session.thinking.append": LiveSession.on_append_context,
    "session.commentary.append": LiveSession.on_append_context,
    "decision.create": LiveSession.on_decision,
    "decision.item.create": LiveSession.on_decision,
    "decision.item.delete": LiveSession.on_decision,
    "response.item.create": LiveSession.on_response_item,
    "response.create": LiveSession.on_response_create,
    "session.close": LiveSession.on_close,
}
