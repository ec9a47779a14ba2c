"""One client connection of `voiced sim`: the GA Realtime protocol as upstream speaks it.

Every event goes out through one writer task in the order the protocol logic emits it:
the logic itself never waits on the socket, so what happens between two events (a
cancel, a barge-in, a late transcript) is decided by the protocol's rules, never by
which task the event loop ran first. It waits only where upstream's work takes time:
recognising speech, speaking, and streaming a reply at about real time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import operator
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from voiced.sim import fields, voice
from voiced.sim.connection import Connection
from voiced.sim.responses import (
    ClientMistake,
    Responder,
    Response,
    Turn,
    check_modalities,
    new_id,
    pieces,
)
from voiced.wire import SAMPLE_RATE

if TYPE_CHECKING:
    from voiced.sim.server import SimServer

logger = logging.getLogger(__name__)

_VAD_FRAME = SAMPLE_RATE // 100  # 10 ms
_MIN_COMMIT = SAMPLE_RATE // 10 * 2  # bytes: upstream commits at least 100 ms


class SimSession(Connection, Responder):
    """One client connection; keeps what tests want to inspect."""

    def __init__(self, ws: ServerConnection, server: SimServer, model: str) -> None:
        super().__init__(ws, server.options)
        self.server = server
        self.clock = server.clock
        self.index = len(server.sessions)  # the n-th connection of the server
        self.created_at = self.clock.time()
        self.expires_at = self.created_at + self.opts.max_session_s
        self.session = fields.default_session(model, new_id("sess"), int(self.expires_at))
        self.received: list[dict[str, Any]] = []  # every client event, audio elided
        self.sent: list[dict[str, Any]] = []  # every event written to the socket
        self.sent_at: list[float] = []  # time.monotonic() of each
        self.ended_at: float | None = None  # when the connection ended
        self.ended_busy = False  # it ended while a reply or the user's speech was going on
        self.appended = bytearray()  # every byte of input audio, in order
        self.buffer = bytearray()  # uncommitted input audio
        self.items: dict[str, dict[str, Any]] = {}  # the conversation, in order
        self.item_audio_ms: dict[str, float] = {}  # assistant audio sent, by item
        self.response: Response | None = None  # the conversation's active response
        self.out_of_band: dict[str, Response] = {}  # conversation "none" responses
        self.responses_done: list[dict[str, Any]] = []
        self.expired = False
        self._prev: dict[str, str | None] = {}  # each item's previous_item_id
        self._turn_of: dict[str, Turn] = {}  # user audio items → their turn
        self._claimable: list[Turn] = []  # a manual commit, for the response.create after
        self._fresh: list[Turn] = []
        self._reply_owed = False  # speech ended during a reply (interrupt_response false)
        self._audio_out = False  # assistant audio was sent: the voice is fixed
        self._speech_on: float | None = None  # ms where speech started
        self._speech_item: str | None = None
        self._silence_ms = 0.0
        self._vad_pos = 0  # bytes of appended audio the VAD has looked at
        self._idle_from_ms = 0.0  # input position the idle timeout counts from
        faults = self.opts.expire_at_input_ms
        self._expire_at_ms = faults[self.index] if self.index < len(faults) else None

    # ----------------------------------------------------------------- output

    def emit(self, event: dict[str, Any]) -> None:
        """Queue a server event (with an event_id) for the writer, as it is now."""
        self._out.put_nowait(("event", json.dumps({"event_id": new_id("event"), **event})))

    def _error(self, code: str, message: str, *, param: str | None = None,
               event_id: str | None = None, etype: str = "invalid_request_error") -> None:
        self.emit({"type": "error", "error": {"type": etype, "code": code, "message": message,
                                              "param": param, "event_id": event_id}})

    def _written(self, payload: Any) -> str:
        self.sent.append(json.loads(payload))
        self.sent_at.append(time.monotonic())
        return str(payload)

    def expire(self) -> None:
        """End the session as upstream does at its maximum duration."""
        if self.expired:
            return
        self.expired = True
        minutes = self.opts.max_session_s / 60
        self._error("session_expired",
                    f"Your session hit the maximum duration of {minutes:g} minutes.")
        self._out.put_nowait(("close", (1001, "invalid_request_error.session_expired")))

    # ----------------------------------------------------------------- input

    async def run(self) -> None:
        """Serve this connection until it closes or the session expires."""
        writer = asyncio.get_running_loop().create_task(self._writer())
        self.emit({"type": "session.created", "session": self.session})
        self._spawn(self._expire_later())
        if self.opts.stall_after_s is not None:
            self._spawn(self._stall_later(self.opts.stall_after_s))
        try:
            async for frame in self.ws:
                await self._on_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            self.ended_at = time.monotonic()
            self.ended_busy = self.response is not None or self._speech_on is not None
            for t in [*self._tasks, writer]:
                t.cancel()

    async def _stall_later(self, delay: float) -> None:
        await self.clock.sleep_until(self.created_at + delay)
        self.stall()

    async def _expire_later(self) -> None:
        await self.clock.sleep_until(self.expires_at)
        self.expire()

    async def _on_frame(self, frame: str | bytes) -> None:
        # a manual commit's turn goes to the response.create right after it, if that is
        # what comes next (its late transcript follows that response's first delta)
        self._claimable, self._fresh = self._fresh, []
        try:
            await self._handle_frame(frame)
        finally:
            self._free(self._claimable)
            self._claimable = []

    async def _handle_frame(self, frame: str | bytes) -> None:
        decoded = self._client_event(frame)
        if decoded is None:
            return
        ev, event_id = decoded
        self.received.append({k: v for k, v in ev.items() if k != "audio"})
        if ev["type"] in ("input_audio_buffer.commit", "input_audio_buffer.clear"):
            # where in the input audio it came (tests line it up with what was sent)
            self.received[-1]["input_bytes"] = len(self.appended)
        handler = _HANDLERS.get(ev["type"])
        if handler is None:
            self._error("invalid_value", f"Invalid value: '{ev['type']}'. Supported values "
                        "are: " + ", ".join(_HANDLERS), param="type", event_id=event_id)
            return
        unknown = fields.unknown_field(ev, fields.CLIENT_EVENTS[ev["type"]], "")
        if unknown is not None:
            self._error("unknown_parameter", f"Unknown parameter: '{unknown}'.",
                        param=unknown, event_id=event_id)
            return
        try:
            await handler(self, ev)
        except ClientMistake as m:
            self._error(m.code, m.message, param=m.param, event_id=event_id, etype=m.etype)
        except (TypeError, AttributeError, ValueError, KeyError) as e:
            # a field of the wrong type where the simulator trusted the shape: refused,
            # and the session goes on (upstream names the field; this says what broke)
            logger.warning("simulator: %s refused: %r", ev["type"], e)
            self._error("invalid_type", f"Invalid type in '{ev['type']}': {e}",
                        event_id=event_id)

    # ----------------------------------------------------------------- session

    async def on_session_update(self, ev: dict[str, Any]) -> None:
        """Merge the update into the session and echo the effective config."""
        s = ev.get("session")
        if not isinstance(s, dict):
            raise ClientMistake.missing("session")
        if "type" not in s:
            raise ClientMistake.missing("session.type")
        if s["type"] != "realtime":
            raise ClientMistake("invalid_value", "voiced sim serves realtime sessions only "
                                "(transcription sessions are not simulated).", "session.type")
        audio = s.get("audio") or {}
        for side in ("input", "output"):
            fmt = (audio.get(side) or {}).get("format")
            if isinstance(fmt, dict) and fmt.get("type") == "audio/pcm" and fmt.get(
                    "rate", SAMPLE_RATE) != SAMPLE_RATE:
                raise ClientMistake("invalid_value", "Only a 24kHz sample rate is supported.",
                                    f"session.audio.{side}.format.rate")
        voice_name = (audio.get("output") or {}).get("voice")
        if voice_name is not None and not isinstance(voice_name, dict):
            if voice_name not in fields.VOICES:
                raise ClientMistake("invalid_value", f"Invalid value: '{voice_name}'.",
                                    "session.audio.output.voice")
            if self._audio_out and voice_name != self.session["audio"]["output"]["voice"]:
                raise ClientMistake("cannot_update_voice", "Cannot update a conversation's "
                                    "voice if assistant audio is present.")
        if "output_modalities" in s:
            check_modalities(s["output_modalities"], "session.output_modalities")
        td = (audio.get("input") or {}).get("turn_detection", False)
        if td is not False and td is not None:
            if not isinstance(td, dict) or td.get("type") not in fields.VAD_DEFAULTS:
                raise ClientMistake("invalid_value", "Invalid turn detection type.",
                                    "session.audio.input.turn_detection.type")
            audio["input"]["turn_detection"] = {**fields.VAD_DEFAULTS[td["type"]], **td}
        for key, value in s.items():
            if key != "audio":
                self.session[key] = value
        for side in ("input", "output"):
            self.session["audio"][side].update(audio.get(side) or {})
        self._idle_from_ms = self._input_ms()
        self.emit({"type": "session.updated", "session": self.session})

    # ----------------------------------------------------------------- input audio

    def _input_ms(self) -> float:
        return len(self.appended) / 2 / SAMPLE_RATE * 1000

    async def on_append(self, ev: dict[str, Any]) -> None:
        """Add audio to the buffer and run server VAD over it."""
        try:
            pcm = base64.b64decode(str(ev.get("audio", "")), validate=True)
        except binascii.Error:
            raise ClientMistake("invalid_value", "Invalid 'audio'. Expected base64.",
                                "audio") from None
        self.appended += pcm
        self.buffer += pcm
        if self._expire_at_ms is not None and self._input_ms() >= self._expire_at_ms:
            self._expire_at_ms = None
            self.expire()
            return
        td = self.session["audio"]["input"]["turn_detection"]
        if td:
            self._vad(td)

    def _vad(self, td: dict[str, Any]) -> None:
        # NOTE: an energy VAD: threshold 0..1 maps to -70..-10 dBFS, 10 ms frames
        level = 10 ** ((-70 + 60 * float(td.get("threshold", 0.5))) / 20) * 32768
        silence_ms = float(td.get("silence_duration_ms", 500))
        prefix_ms = float(td.get("prefix_padding_ms", 300))
        idle_ms = td.get("idle_timeout_ms") if td.get("type") == "server_vad" else None
        fb = _VAD_FRAME * 2
        while self._vad_pos + fb <= len(self.appended):
            off = self._vad_pos
            self._vad_pos += fb
            a = memoryview(bytes(self.appended[off:off + fb])).cast("h")
            loud = math.sqrt(sum(map(operator.mul, a, a)) / len(a)) > level
            pos_ms = off / 2 / SAMPLE_RATE * 1000
            if self._speech_on is None:
                if loud:
                    self._speech_on = max(0.0, pos_ms - prefix_ms)
                    self._silence_ms = 0.0
                    self._speech_item = new_id("item")
                    # upstream order: the client hears of the speech, then of the cancel
                    self.emit({"type": "input_audio_buffer.speech_started",
                               "audio_start_ms": int(self._speech_on),
                               "item_id": self._speech_item})
                    if self.response is not None and td.get("interrupt_response", True):
                        self._cancel(self.response, "turn_detected")
                elif (isinstance(idle_ms, int) and idle_ms > 0 and self.response is None
                      and not self._reply_owed
                      and pos_ms + 10 - self._idle_from_ms >= idle_ms):
                    self._idle_timeout(pos_ms + 10, td)
            elif loud:
                self._silence_ms = 0.0
            else:
                self._silence_ms += 10
                if self._silence_ms >= silence_ms:
                    item_id = self._speech_item or new_id("item")
                    self._speech_on = None
                    self.emit({"type": "input_audio_buffer.speech_stopped",
                               "audio_end_ms": int(pos_ms + 10), "item_id": item_id})
                    self._server_turn(item_id, td)

    def _idle_timeout(self, pos_ms: float, td: dict[str, Any]) -> None:
        """No speech for ``idle_timeout_ms`` after the reply was heard: go on by itself.

        Upstream commits the quiet audio and asks the model to respond.
        """
        item_id = new_id("item")
        self.emit({"type": "input_audio_buffer.timeout_triggered",
                   "audio_start_ms": int(self._idle_from_ms), "audio_end_ms": int(pos_ms),
                   "item_id": item_id})
        self._server_turn(item_id, td, idle=True)

    def _server_turn(self, item_id: str, td: dict[str, Any], *, idle: bool = False) -> None:
        """The server ended a turn: commit it, and respond if the session says so."""
        turn = self._commit(item_id)
        if not td.get("create_response", True):
            self._free([turn])
        elif self.response is None:
            self._start_response({}, turns=[turn], idle=idle)
        else:
            # a reply is still going (interrupt_response false): one response at a time,
            # so the answer to these words comes when it is over
            self._reply_owed = True
            self._free([turn])

    async def on_commit(self, ev: dict[str, Any]) -> None:
        """Manual commit: at least 100 ms of audio, as upstream."""
        if len(self.buffer) < _MIN_COMMIT:
            ms = len(self.buffer) / 2 / SAMPLE_RATE * 1000
            raise ClientMistake(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {ms:.2f}ms of audio.")
        self._fresh = [self._commit(new_id("item"))]

    async def on_clear(self, ev: dict[str, Any]) -> None:
        """Drop the uncommitted buffer."""
        self.buffer.clear()
        self._speech_on = None
        self.emit({"type": "input_audio_buffer.cleared"})

    def _commit(self, item_id: str) -> Turn:
        audio = bytes(self.buffer)
        self.buffer.clear()
        self._idle_from_ms = self._input_ms()
        self.emit({"type": "input_audio_buffer.committed", "item_id": item_id,
                   "previous_item_id": self._last_item()})
        item = {"id": item_id, "type": "message", "object": "realtime.item", "role": "user",
                "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}
        self._add_item(item)
        turn = Turn(item, audio, release=self.opts.user_transcript == "early")
        self._turn_of[item_id] = turn
        # NOTE: transcription runs beside the input, as upstream's does
        turn.task = self._spawn(self._transcribe(turn))
        return turn

    async def _transcribe(self, turn: Turn) -> str:
        if self.opts.transcript is not None:
            text = self.opts.transcript
        else:
            text, _real = await asyncio.to_thread(voice.transcribe, turn.audio)
        item_id = turn.item["id"]
        events: list[dict[str, Any]] = []
        if self.session["audio"]["input"].get("transcription") is not None:
            if self.server.take_transcription_failure():
                events.append({
                    "type": "conversation.item.input_audio_transcription.failed",
                    "item_id": item_id, "content_index": 0, "error": {
                        "type": "transcription_error", "code": "audio_unintelligible",
                        "message": "The audio could not be transcribed.", "param": None}})
            else:
                turn.item["content"][0]["transcript"] = text
                events += [{"type": "conversation.item.input_audio_transcription.delta",
                            "item_id": item_id, "content_index": 0, "delta": piece}
                           for piece in pieces(text, 3)]
                seconds = round(len(turn.audio) / 2 / SAMPLE_RATE, 3)
                events.append({
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id, "content_index": 0, "transcript": text,
                    "usage": {"type": "duration", "seconds": seconds}})
        turn.events = events
        self._release(turn)
        return text

    def _release(self, turn: Turn) -> None:
        """Send a turn's transcript events, once they are ready and allowed out."""
        if turn.release and turn.events is not None and not turn.sent:
            turn.sent = True
            for event in turn.events:
                self.emit(event)

    def _free(self, turns: list[Turn]) -> None:
        """No response carries these turns' transcripts: they go out when ready."""
        for turn in turns:
            turn.release = True
            self._release(turn)

    # ----------------------------------------------------------------- items

    def _last_item(self) -> str | None:
        return next(reversed(self.items), None)

    def _add_item(self, item: dict[str, Any], after: str | None | bool = False) -> None:
        """Add an item to the conversation (at the end, or after ``after``; None: first)."""
        if after is False or after == self._last_item():
            prev = self._last_item()
            self.items[item["id"]] = item
        else:
            prev = after if isinstance(after, str) else None
            order = list(self.items.items())
            at = 0 if prev is None else [k for k, _ in order].index(prev) + 1
            order.insert(at, (item["id"], item))
            self.items = dict(order)
        self._prev[item["id"]] = prev
        self.emit({"type": "conversation.item.added", "item": item, "previous_item_id": prev})
        if item.get("status") != "in_progress":
            self.emit({"type": "conversation.item.done", "item": item,
                       "previous_item_id": prev})

    async def on_item_create(self, ev: dict[str, Any]) -> None:
        """Add a client-made item (context re-seeding, tool outputs)."""
        item = ev.get("item")
        if not isinstance(item, dict) or "type" not in item:
            raise ClientMistake.missing("item")
        after: str | None | bool = False
        if "previous_item_id" in ev:
            after = ev["previous_item_id"]
            if after == "root":
                after = None
            elif after is not None and after not in self.items:
                raise ClientMistake("invalid_value", f"Item with id '{after}' not found.",
                                    "previous_item_id")
        if item.get("id") in self.items:
            raise ClientMistake("invalid_value", f"Item with id '{item['id']}' already "
                                "exists.", "item.id")
        self._add_item({"id": item.get("id") or new_id("item"), "object": "realtime.item",
                        "status": "completed", **item}, after)

    async def on_truncate(self, ev: dict[str, Any]) -> None:
        """Truncate an assistant message's audio at what the user heard."""
        item_id = ev.get("item_id")
        item = self.items.get(str(item_id))
        if item is None:
            raise ClientMistake("item_truncate_invalid_item_id",
                                f"Item with item_id '{item_id}' not found.", "item_id")
        if item.get("type") != "message" or item.get("role") != "assistant":
            raise ClientMistake("invalid_value", "Only assistant messages can be truncated.",
                                "item_id")
        end = ev.get("audio_end_ms")
        if not isinstance(end, int) or isinstance(end, bool) or end < 0:
            raise ClientMistake("invalid_value", "Invalid 'audio_end_ms'.", "audio_end_ms")
        if ev.get("content_index", 0) != 0:
            raise ClientMistake("invalid_value", "Invalid 'content_index': the item has one "
                                "content part.", "content_index")
        sent = self.item_audio_ms.get(str(item_id), 0.0)
        if end > sent:
            raise ClientMistake(
                "invalid_value",
                f"Audio content of {sent:.0f}ms is shorter than {end}ms.", "audio_end_ms")
        self.emit({"type": "conversation.item.truncated", "item_id": item_id,
                   "content_index": 0, "audio_end_ms": end})

    async def on_item_delete(self, ev: dict[str, Any]) -> None:
        """Delete an item."""
        if self.items.pop(str(ev.get("item_id")), None) is None:
            raise ClientMistake("invalid_value", "Item not found.", "item_id")
        self.emit({"type": "conversation.item.deleted", "item_id": ev["item_id"]})

    async def on_item_retrieve(self, ev: dict[str, Any]) -> None:
        """Return an item."""
        item = self.items.get(str(ev.get("item_id")))
        if item is None:
            raise ClientMistake("invalid_value", "Item not found.", "item_id")
        self.emit({"type": "conversation.item.retrieved", "item": item})

_HANDLERS: dict[str, Callable[[SimSession, dict[str, Any]], Coroutine[Any, Any, None]]] = {
    "session.update": SimSession.on_session_update,
    "input_audio_buffer.append": SimSession.on_append,
    "input_audio_buffer.commit": SimSession.on_commit,
    "input_audio_buffer.clear": SimSession.on_clear,
    "conversation.item.create": SimSession.on_item_create,
    "conversation.item.truncate": SimSession.on_truncate,
    "conversation.item.delete": SimSession.on_item_delete,
    "conversation.item.retrieve": SimSession.on_item_retrieve,
    "response.create": SimSession.on_response_create,
    "response.cancel": SimSession.on_response_cancel,
}
