"""A local server that speaks the GA Realtime dialect, for demos, installers and tests.

It does what the real API does on the parts voiced uses: session.created/updated, the
input buffer with server VAD (threshold, prefix padding, silence duration), input
transcription, audio responses streamed at about real time in the GA event order,
cancellation, truncation, its error events, 60-minute-style expiry, and auth refusal.
Tests drive its faults through :class:`SimServer`'s methods.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import operator
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voiced.sim import voice
from voiced.wire import SAMPLE_RATE

logger = logging.getLogger(__name__)

_CHUNK_MS = 100  # reply audio per delta
_LEAD_MS = 300  # how far ahead of real time the reply is streamed
_VAD_FRAME = SAMPLE_RATE // 100  # 10 ms
_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin",
           "cedar")


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass
class SimOptions:
    """How the simulator behaves."""

    require_key: str | None = None
    """Refuse a bearer that is not this key (error invalid_api_key, close 3000)."""
    max_session_s: float = 3600.0
    """Sessions end with session_expired then close 1001 after this long."""
    pace: float = 1.0
    """Reply audio is streamed at this multiple of real time."""
    reply: Callable[[str], str] = field(default=lambda heard: f"You said: {heard}")
    """The assistant's words, given the user's transcript."""
    drop_mid_response: int = 0
    """Faults: abort the connection (no close frame) halfway through the next N replies."""
    stall_after_s: float | None = None
    """Faults: after this long, stop reading and sending (no pongs either)."""
    malformed_every: int = 0
    """Faults: after every N events sent, also send a malformed frame."""
    unknown_every: int = 0
    """Faults: after every N events sent, also send an event of an unknown type."""
    transcript: str | None = None
    """What the user is heard to say, whatever the audio (tests of tools and languages);
    None: the recogniser's transcript."""
    tool_arguments: dict[str, str] = field(default_factory=dict)
    """The JSON arguments the simulated model passes to each tool, by name ("{}")."""


def _default_session(model: str) -> dict[str, Any]:
    return {
        "type": "realtime", "object": "realtime.session", "id": _id("sess"), "model": model,
        "output_modalities": ["audio"], "instructions": "",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                      "transcription": None, "noise_reduction": None,
                      "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                         "prefix_padding_ms": 300, "silence_duration_ms": 200,
                                         "idle_timeout_ms": None, "create_response": True,
                                         "interrupt_response": True}},
            "output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                       "voice": "alloy", "speed": 1.0}},
        "tools": [], "tool_choice": "auto", "max_output_tokens": "inf",
        "tracing": None, "truncation": "auto", "prompt": None,
        "expires_at": 0, "include": None,
    }


class _ClientMistake(Exception):
    def __init__(self, code: str, message: str, param: str | None = None,
                 etype: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.etype = code, message, param, etype


@dataclass
class _Response:
    id: str
    task: asyncio.Task[None] | None = None
    item_id: str | None = None
    audio_sent_ms: float = 0.0
    transcript_sent: str = ""


class SimSession:
    """One client connection; keeps what tests want to inspect."""

    def __init__(self, ws: ServerConnection, opts: SimOptions, model: str,
                 server: SimServer | None = None) -> None:
        self.ws = ws
        self.server = server
        self.opts = opts
        self.session = _default_session(model)
        self.created_at = time.time()
        self.session["expires_at"] = int(self.created_at + opts.max_session_s)
        self.received: list[dict[str, Any]] = []  # every client event, audio elided
        self.sent: list[dict[str, Any]] = []
        self.sent_at: list[float] = []  # time.monotonic() of each sent event
        self.ended_at: float | None = None  # when the connection ended
        self.appended = bytearray()  # every byte of input audio, in order
        self.buffer = bytearray()  # uncommitted input audio
        self.buffer_start_ms = 0.0  # stream position of buffer[0]
        self.items: dict[str, dict[str, Any]] = {}
        self.item_audio_ms: dict[str, float] = {}
        self.response: _Response | None = None
        self.responses_done: list[dict[str, Any]] = []
        self._speech_on: float | None = None  # ms where speech started
        self._vad_pos = 0  # bytes of appended audio the VAD has looked at
        self._silence_ms = 0.0
        self._speech_item: str | None = None
        self._last_item: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stalled = False

    # ----------------------------------------------------------------- output

    async def send(self, event: dict[str, Any]) -> None:
        """Send a server event (adds event_id)."""
        event = {"event_id": _id("event"), **event}
        self.sent.append(event)
        self.sent_at.append(time.monotonic())
        if self.stalled:
            return
        await self.ws.send(json.dumps(event))
        n = len(self.sent)
        if self.opts.malformed_every and n % self.opts.malformed_every == 0:
            await self.ws.send('{"type": "response.output_audio.delta", "delta": 12')
        if self.opts.unknown_every and n % self.opts.unknown_every == 0:
            await self.ws.send(json.dumps({"type": "sim.unknown_event", "event_id": _id("event"),
                                           "note": "clients must ignore unknown types"}))

    def stall(self) -> None:
        """Go silent: stop reading (so pings get no pong) and sending."""
        self.stalled = True
        self.ws.transport.pause_reading()

    async def error(self, code: str, message: str, *, param: str | None = None,
                    event_id: str | None = None, etype: str = "invalid_request_error") -> None:
        """Send an ``error`` event the way upstream shapes it."""
        await self.send({"type": "error", "error": {
            "type": etype, "code": code, "message": message, "param": param,
            "event_id": event_id}})

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------- input

    async def run(self) -> None:
        """Serve this connection until it closes or the session expires."""
        await self.send({"type": "session.created", "session": self.session})
        expiry = self._spawn(self._expire_later())
        if self.opts.stall_after_s is not None:
            self._spawn(self._stall_later(self.opts.stall_after_s))
        try:
            async for frame in self.ws:
                await self._on_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            self.ended_at = time.monotonic()
            expiry.cancel()
            for t in list(self._tasks):
                t.cancel()

    async def _stall_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.stall()

    async def _expire_later(self) -> None:
        await asyncio.sleep(self.opts.max_session_s)
        msg = (f"Your session hit the maximum duration of "
               f"{self.opts.max_session_s / 60:g} minutes.")
        await self.error("session_expired", msg)
        await self.ws.close(1001, "invalid_request_error.session_expired")

    async def _on_frame(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.error("invalid_event", "Expected a text WebSocket message, got binary.")
            return
        try:
            ev = json.loads(frame)
        except ValueError:
            await self.error("invalid_json", "The server could not parse the JSON.")
            return
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
            await self.error("invalid_event", "Missing required parameter: 'type'.", param="type")
            return
        event_id = ev.get("event_id") if isinstance(ev.get("event_id"), str) else None
        kept = {k: v for k, v in ev.items() if k != "audio"}
        self.received.append(kept)
        handler = _HANDLERS.get(ev["type"])
        if handler is None:
            await self.error("invalid_value",
                             f"Invalid value: '{ev['type']}'. Supported values are: "
                             + ", ".join(_HANDLERS), param="type", event_id=event_id)
            return
        try:
            await handler(self, ev)
        except _ClientMistake as m:
            await self.error(m.code, m.message, param=m.param, event_id=event_id, etype=m.etype)

    # ----------------------------------------------------------------- handlers

    async def on_session_update(self, ev: dict[str, Any]) -> None:
        """Merge the update into the session and echo the effective config."""
        s = ev.get("session")
        if not isinstance(s, dict):
            raise _ClientMistake("missing_required_parameter",
                                 "Missing required parameter: 'session'.", "session")
        if s.get("type") not in ("realtime",):
            raise _ClientMistake("missing_required_parameter",
                                 "Missing required parameter: 'session.type'.", "session.type")
        for beta_key in ("modalities", "input_audio_format", "turn_detection", "voice",
                         "temperature", "input_audio_transcription"):
            if beta_key in s:
                raise _ClientMistake("unknown_parameter",
                                     f"Unknown parameter: 'session.{beta_key}'.",
                                     f"session.{beta_key}")
        audio = s.get("audio") or {}
        fmt = (audio.get("input") or {}).get("format")
        if fmt is not None and fmt != {"type": "audio/pcm", "rate": SAMPLE_RATE} and fmt.get(
                "type") == "audio/pcm":
            raise _ClientMistake("invalid_value", "Only a 24kHz sample rate is supported.",
                                 "session.audio.input.format.rate")
        voice_name = (audio.get("output") or {}).get("voice")
        if voice_name is not None and voice_name not in _VOICES:
            raise _ClientMistake("invalid_value", f"Invalid value: '{voice_name}'.",
                                 "session.audio.output.voice")
        for key in ("instructions", "output_modalities", "tools", "tool_choice", "model",
                    "max_output_tokens", "truncation"):
            if key in s:
                self.session[key] = s[key]
        for side in ("input", "output"):
            for k, v in (audio.get(side) or {}).items():
                self.session["audio"][side][k] = v
        await self.send({"type": "session.updated", "session": self.session})

    async def on_append(self, ev: dict[str, Any]) -> None:
        """Add audio to the buffer and run server VAD over it."""
        try:
            pcm = base64.b64decode(str(ev.get("audio", "")), validate=True)
        except binascii.Error:
            raise _ClientMistake("invalid_value", "Invalid 'audio'. Expected base64.",
                                 "audio") from None
        self.appended += pcm
        self.buffer += pcm
        td = self.session["audio"]["input"]["turn_detection"]
        if td and td.get("type") in ("server_vad", "semantic_vad"):
            await self._vad(td)

    async def _vad(self, td: dict[str, Any]) -> None:
        # NOTE: energy VAD: threshold 0..1 maps to -70..-10 dBFS, 10 ms frames
        level = 10 ** ((-70 + 60 * float(td.get("threshold", 0.5))) / 20) * 32768
        silence_ms = float(td.get("silence_duration_ms", 500))
        prefix_ms = float(td.get("prefix_padding_ms", 300))
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
                    self._speech_item = _id("item")
                    # upstream order: the client hears of the speech, then of the cancel
                    await self.send({"type": "input_audio_buffer.speech_started",
                                     "audio_start_ms": int(self._speech_on),
                                     "item_id": self._speech_item})
                    if self.response is not None and td.get("interrupt_response", True):
                        await self._cancel_response("turn_detected")
            elif loud:
                self._silence_ms = 0.0
            else:
                self._silence_ms += 10
                if self._silence_ms >= silence_ms:
                    end_ms = pos_ms + 10
                    item_id = self._speech_item or _id("item")
                    self._speech_on = None
                    await self.send({"type": "input_audio_buffer.speech_stopped",
                                     "audio_end_ms": int(end_ms), "item_id": item_id})
                    await self._commit(item_id, create_response=bool(
                        td.get("create_response", True)))

    async def on_commit(self, ev: dict[str, Any]) -> None:
        """Manual commit: at least 100 ms of audio, as upstream."""
        if len(self.buffer) < SAMPLE_RATE // 10 * 2:
            ms = len(self.buffer) / 2 / SAMPLE_RATE * 1000
            raise _ClientMistake(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {ms:.2f}ms of audio.")
        await self._commit(_id("item"), create_response=False)

    async def on_clear(self, ev: dict[str, Any]) -> None:
        """Drop the uncommitted buffer."""
        self.buffer.clear()
        self._speech_on = None
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _commit(self, item_id: str, *, create_response: bool) -> None:
        audio = bytes(self.buffer)
        self.buffer.clear()
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id,
                         "previous_item_id": self._last_item})
        item = {"id": item_id, "type": "message", "object": "realtime.item", "role": "user",
                "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        await self._add_item(item)
        # NOTE: transcription runs beside the input, as upstream's does
        self._spawn(self._transcribe_and_respond(item, audio, create_response))

    async def _transcribe_and_respond(self, item: dict[str, Any], audio: bytes,
                                      create_response: bool) -> None:
        item_id = item["id"]
        if self.opts.transcript is not None:
            text = self.opts.transcript
        else:
            text, _real = await asyncio.to_thread(voice.transcribe, audio)
        item["content"][0]["transcript"] = text
        if self.session["audio"]["input"].get("transcription") is not None:
            await self.send({
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id, "content_index": 0, "transcript": text,
                "usage": {"type": "duration", "seconds": round(len(audio) / 2 / SAMPLE_RATE, 3)}})
        if create_response:
            await self._respond_to(text)

    def _tools_named_in(self, text: str) -> list[str]:
        """The tools the user named (the simulated model calls each, in one response)."""
        words = text.lower()
        return [str(t["name"]) for t in self.session.get("tools") or []
                if t.get("name") and (str(t["name"]).lower() in words
                                      or str(t["name"]).lower().replace("_", " ") in words)]

    async def _respond_to(self, text: str) -> None:
        names = self._tools_named_in(text)
        if names:
            resp = _Response(id=_id("resp"))
            self.response = resp
            resp.task = self._spawn(self._stream_function_calls(resp, names))
        else:
            await self._start_response(self.opts.reply(text or "nothing"))

    async def _add_item(self, item: dict[str, Any]) -> None:
        self.items[item["id"]] = item
        await self.send({"type": "conversation.item.added", "item": item,
                         "previous_item_id": self._last_item})
        await self.send({"type": "conversation.item.done", "item": item,
                         "previous_item_id": self._last_item})
        self._last_item = item["id"]

    async def on_item_create(self, ev: dict[str, Any]) -> None:
        """Add a client-made item (context re-seeding, tool outputs)."""
        item = ev.get("item")
        if not isinstance(item, dict) or "type" not in item:
            raise _ClientMistake("missing_required_parameter",
                                 "Missing required parameter: 'item'.", "item")
        item = {"id": item.get("id") or _id("item"), "object": "realtime.item",
                "status": "completed", **item}
        await self._add_item(item)

    async def on_response_create(self, ev: dict[str, Any]) -> None:
        """Start a response to the conversation so far."""
        if self.response is not None:
            raise _ClientMistake(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: "
                f"{self.response.id}. Wait until the response is finished before creating "
                f"a new one.")
        outputs: list[dict[str, Any]] = []
        for item in reversed(self.items.values()):  # the outputs since the last call
            if item.get("type") != "function_call_output":
                break
            outputs.insert(0, item)
        if outputs:
            said = []
            for out in outputs:
                name = next((i.get("name") for i in self.items.values()
                             if i.get("call_id") == out.get("call_id")
                             and i.get("type") == "function_call"), "tool")
                said.append(f"The {name} tool says: {out.get('output')}")
            await self._start_response(" ".join(said))
            return
        heard = ""
        for item in reversed(self.items.values()):
            if item.get("role") == "user":
                part = (item.get("content") or [{}])[0]  # input_audio or input_text
                heard = str(part.get("transcript") or part.get("text") or "")
                break
        await self._respond_to(heard)

    async def on_response_cancel(self, ev: dict[str, Any]) -> None:
        """Cancel the active response, or refuse like upstream."""
        if self.response is None:
            raise _ClientMistake("response_cancel_not_active",
                                 "Cancellation failed: no active response found")
        await self._cancel_response("client_cancelled")

    async def on_truncate(self, ev: dict[str, Any]) -> None:
        """Truncate an assistant item's audio at what the user heard."""
        item_id = ev.get("item_id")
        end = ev.get("audio_end_ms")
        if item_id not in self.items:
            raise _ClientMistake("item_truncate_invalid_item_id",
                                 f"Item with item_id '{item_id}' not found.", "item_id")
        if not isinstance(end, int) or end < 0:
            raise _ClientMistake("invalid_value", "Invalid 'audio_end_ms'.", "audio_end_ms")
        sent = self.item_audio_ms.get(str(item_id), 0.0)
        if end > sent:
            raise _ClientMistake(
                "invalid_value",
                f"Audio content of {sent:.0f}ms is shorter than {end}ms.", "audio_end_ms")
        await self.send({"type": "conversation.item.truncated", "item_id": item_id,
                         "content_index": int(ev.get("content_index") or 0),
                         "audio_end_ms": end})

    async def on_item_delete(self, ev: dict[str, Any]) -> None:
        """Delete an item."""
        if self.items.pop(str(ev.get("item_id")), None) is None:
            raise _ClientMistake("invalid_value", "Item not found.", "item_id")
        await self.send({"type": "conversation.item.deleted", "item_id": ev["item_id"]})

    async def on_item_retrieve(self, ev: dict[str, Any]) -> None:
        """Return an item."""
        item = self.items.get(str(ev.get("item_id")))
        if item is None:
            raise _ClientMistake("invalid_value", "Item not found.", "item_id")
        await self.send({"type": "conversation.item.retrieved", "item": item})

    # ----------------------------------------------------------------- responses

    async def _start_response(self, text: str) -> None:
        resp = _Response(id=_id("resp"))
        self.response = resp
        resp.task = self._spawn(self._stream_response(resp, text))

    def _response_obj(self, resp: _Response, status: str, output: list[dict[str, Any]],
                      reason: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "object": "realtime.response", "id": resp.id, "status": status,
            "status_details": None, "output": output,
            "conversation_id": "conv_sim", "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                                 "voice": self.session["audio"]["output"]["voice"]}},
            "usage": None, "metadata": None,
        }
        if reason is not None:
            obj["status_details"] = {"type": status, "reason": reason}
        if status != "in_progress":
            words = len(resp.transcript_sent.split())
            obj["usage"] = {"total_tokens": 30 + words * 2, "input_tokens": 30,
                            "output_tokens": words * 2,
                            "input_token_details": {"text_tokens": 10, "audio_tokens": 20,
                                                    "cached_tokens": 0},
                            "output_token_details": {"text_tokens": words,
                                                     "audio_tokens": words}}
        return obj

    async def _stream_response(self, resp: _Response, text: str) -> None:
        await self.send({"type": "response.created",
                         "response": self._response_obj(resp, "in_progress", [])})
        pcm = await asyncio.to_thread(voice.speak, text)
        item_id = resp.item_id = _id("item")
        item: dict[str, Any] = {"id": item_id, "type": "message", "object": "realtime.item",
                "role": "assistant", "status": "in_progress", "content": []}
        self.items[item_id] = item
        self.item_audio_ms[item_id] = 0.0
        base = {"response_id": resp.id, "item_id": item_id, "output_index": 0}
        await self.send({"type": "response.output_item.added", "response_id": resp.id,
                         "output_index": 0, "item": item})
        await self.send({"type": "conversation.item.added", "item": item,
                         "previous_item_id": self._last_item})
        self._last_item = item_id
        await self.send({"type": "response.content_part.added", **base, "content_index": 0,
                         "part": {"type": "audio", "transcript": ""}})
        chunk = SAMPLE_RATE * _CHUNK_MS // 1000 * 2
        words = text.split()
        n_chunks = max(1, math.ceil(len(pcm) / chunk))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        word_i = 0
        for i in range(n_chunks):
            ahead = (i * _CHUNK_MS - _LEAD_MS) / 1000 / self.opts.pace
            delay = t0 + ahead - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            part = pcm[i * chunk:(i + 1) * chunk]
            await self.send({"type": "response.output_audio.delta", **base, "content_index": 0,
                             "delta": base64.b64encode(part).decode()})
            resp.audio_sent_ms += len(part) / 2 / SAMPLE_RATE * 1000
            self.item_audio_ms[item_id] = resp.audio_sent_ms
            if i == n_chunks // 2 and self.server is not None and self.server.take_drop():
                logger.info("fault: dropping the connection mid-response")
                self.ws.transport.abort()
                return
            upto = math.ceil(len(words) * (i + 1) / n_chunks)
            if upto > word_i:
                delta = (" " if word_i else "") + " ".join(words[word_i:upto])
                word_i = upto
                resp.transcript_sent += delta
                await self.send({"type": "response.output_audio_transcript.delta", **base,
                                 "content_index": 0, "delta": delta})
        await self.send({"type": "response.output_audio.done", **base, "content_index": 0})
        await self.send({"type": "response.output_audio_transcript.done", **base,
                         "content_index": 0, "transcript": text})
        await self.send({"type": "response.content_part.done", **base, "content_index": 0,
                         "part": {"type": "audio", "transcript": text}})
        item["status"] = "completed"
        item["content"] = [{"type": "output_audio", "transcript": text}]
        await self.send({"type": "conversation.item.done", "item": item,
                         "previous_item_id": None})
        await self.send({"type": "response.output_item.done", "response_id": resp.id,
                         "output_index": 0, "item": item})
        self.response = None
        done = self._response_obj(resp, "completed", [item])
        self.responses_done.append(done)
        await self.send({"type": "response.done", "response": done})
        await self.send({"type": "rate_limits.updated", "rate_limits": [
            {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5}]})

    async def _stream_function_calls(self, resp: _Response, names: list[str]) -> None:
        await self.send({"type": "response.created",
                         "response": self._response_obj(resp, "in_progress", [])})
        done_items = []
        for index, name in enumerate(names):
            item_id = resp.item_id = _id("item")
            call_id = _id("call")
            item: dict[str, Any] = {"id": item_id, "type": "function_call",
                                    "object": "realtime.item", "status": "in_progress",
                                    "call_id": call_id, "name": name, "arguments": ""}
            self.items[item_id] = item
            base = {"response_id": resp.id, "item_id": item_id, "output_index": index,
                    "call_id": call_id}
            await self.send({"type": "response.output_item.added", "response_id": resp.id,
                             "output_index": index, "item": dict(item)})
            await self.send({"type": "conversation.item.added", "item": dict(item),
                             "previous_item_id": self._last_item})
            self._last_item = item_id
            args = self.opts.tool_arguments.get(name, "{}")
            half = len(args) // 2  # the arguments stream in pieces, as upstream's do
            for piece in (args[:half], args[half:]):
                await self.send({"type": "response.function_call_arguments.delta", **base,
                                 "delta": piece})
            await self.send({"type": "response.function_call_arguments.done", **base,
                             "name": name, "arguments": args})
            item.update(status="completed", arguments=args)
            await self.send({"type": "conversation.item.done", "item": dict(item),
                             "previous_item_id": None})
            await self.send({"type": "response.output_item.done", "response_id": resp.id,
                             "output_index": index, "item": dict(item)})
            done_items.append(dict(item))
        self.response = None
        done = self._response_obj(resp, "completed", done_items)
        self.responses_done.append(done)
        await self.send({"type": "response.done", "response": done})

    async def _cancel_response(self, reason: str) -> None:
        resp = self.response
        if resp is None:
            return
        self.response = None
        if resp.task is not None:
            resp.task.cancel()
        output: list[dict[str, Any]] = []
        if resp.item_id is not None:
            item = self.items[resp.item_id]
            item["status"] = "incomplete"
            item["content"] = [{"type": "output_audio", "transcript": resp.transcript_sent}]
            output = [item]
            await self.send({"type": "response.output_item.done", "response_id": resp.id,
                             "output_index": 0, "item": item})
        done = self._response_obj(resp, "cancelled", output, reason)
        self.responses_done.append(done)
        await self.send({"type": "response.done", "response": done})


_HANDLERS: dict[str, Callable[[SimSession, dict[str, Any]], Any]] = {
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


class SimServer:
    """The simulator, importable for tests: ``async with SimServer() as sim: sim.url``."""

    def __init__(self, options: SimOptions | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.options = options or SimOptions()
        self.host = host
        self.port = port
        self.sessions: list[SimSession] = []
        self._server: Server | None = None
        self.refuse_connections = False
        self.attempts: list[float] = []  # time.monotonic() of every connection attempt
        self._drops_left = self.options.drop_mid_response

    def take_drop(self) -> bool:
        """Whether the current reply should be cut by a dropped connection."""
        if self._drops_left > 0:
            self._drops_left -= 1
            return True
        return False

    def drop_next_responses(self, n: int = 1) -> None:
        """Faults: abort the connection halfway through the next ``n`` replies."""
        self._drops_left = n

    def stall(self) -> None:
        """Faults: every open connection goes silent (no events, no pongs)."""
        for s in self.sessions:
            s.stall()

    @property
    def url(self) -> str:
        """The ws:// URL clients connect to."""
        return f"ws://{self.host}:{self.port}/v1/realtime"

    async def start(self) -> None:
        """Listen (port 0 picks a free one)."""
        self._server = await serve(self._handle, self.host, self.port,
                                   process_request=self._check_request, max_size=16 << 20,
                                   compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("simulator listening on %s", self.url)

    def _check_request(self, conn: ServerConnection, req: Request) -> Response | None:
        self.attempts.append(time.monotonic())
        if self.refuse_connections:
            return conn.respond(503, "simulator refusing connections\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        req = ws.request
        assert req is not None
        from urllib.parse import parse_qs, urlsplit

        q = parse_qs(urlsplit(req.path).query)
        model = (q.get("model") or ["gpt-realtime-2.1"])[0]
        bearer = (req.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        fatal: tuple[int, str, str] | None = None
        if self.options.require_key is not None and bearer != self.options.require_key:
            fatal = (3000, "invalid_api_key", "Incorrect API key provided.")
        elif req.headers.get("OpenAI-Beta"):
            fatal = (4000, "beta_api_shape_disabled", "The Realtime Beta API is no longer "
                     "supported. Please use /v1/realtime for the GA API.")
        elif "preview" in model:
            fatal = (4000, "invalid_model", f"Model '{model}' is not supported.")
        if fatal is not None:
            code, err, msg = fatal
            await ws.send(json.dumps({"type": "error", "event_id": _id("event"), "error": {
                "type": "invalid_request_error", "code": err, "message": msg,
                "param": None, "event_id": None}}))
            await ws.close(code, f"invalid_request_error.{err}")
            return
        session = SimSession(ws, self.options, model, self)
        self.sessions.append(session)
        await session.run()

    def drop_connections(self) -> None:
        """Abort every connection without a close frame (a network drop: 1006)."""
        for s in self.sessions:
            s.ws.transport.abort()

    async def inject(self, frame: str | bytes) -> None:
        """Send a raw frame (malformed, unknown, binary) to every open connection."""
        for s in self.sessions:
            with contextlib.suppress(ConnectionClosed):
                await s.ws.send(frame)

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        for session in self.sessions:
            if session.stalled:  # a stalled peer would never answer the close handshake
                session.ws.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def serve_forever(host: str, port: int, options: SimOptions) -> int:
    """Run `voiced sim` until interrupted."""
    sim = SimServer(options, host=host, port=port)
    await sim.start()
    print(f"voiced sim: listening on {sim.url} (GA Realtime dialect; no API key needed)",
          flush=True)
    try:
        await asyncio.Future()
    finally:
        await sim.aclose()
    return 0  # pragma: no cover - only reached by cancellation
