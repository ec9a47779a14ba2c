"""What the relay makes of each event on one connection (pure: no I/O, time passed in).

The relay is a forwarder with a ledger. This module is the ledger and the filter:

- :meth:`Ledger.setup_update` is the relay's own ``session.update`` from the agent;
- :meth:`Ledger.from_device` checks a device event against the allow-list and returns
  what goes upstream (re-encoded from what was parsed, so a frame with duplicate keys
  cannot mean one thing here and another upstream) or what the device is told instead;
- :meth:`Ledger.from_upstream` says whether an upstream event is forwarded and which
  rows must be written first (transcripts, and the truncation of a reply).

It parses only what it must: ``session.updated`` (which update it answers, the model
and voice in effect), the two transcript events, ``response.done`` (transcripts that
had no ``.done``), ``conversation.item.truncated``, ``error`` (which update it refuses)
and the length of reply audio. Everything else passes through as the same text.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Final

from voiced import guard, wire
from voiced.relay.config import Agent
from voiced.transcripts import Transcript, make_record, record_id

logger = logging.getLogger(__name__)

SETUP_EVENT_ID: Final = "relay_setup"
DEVICE_EVENTS: Final = frozenset({
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "conversation.item.create", "conversation.item.retrieve",
    "conversation.item.truncate", "conversation.item.delete", "response.create",
    "response.cancel",
})
"""The GA client events a device may send (``output_audio_buffer.clear`` is WebRTC only)."""
MAX_DEPTH: Final = 32
"""Nesting a device event other than an audio append may have (tool schemas included)."""
_MAX_TRACKED: Final = 256  # items whose audio length / truncation / row is remembered
_AUDIO_EVENTS: Final = frozenset({"response.output_audio.delta", "response.audio.delta"})
_TRANSCRIPT_DONE: Final = frozenset({"response.output_audio_transcript.done",
                                     "response.audio_transcript.done"})
_ACTED_ON: Final = _TRANSCRIPT_DONE | {
    "session.updated", "conversation.item.input_audio_transcription.completed",
    "response.done", "conversation.item.truncated", "error"}
_PCM_FORMAT: Final = {"type": "audio/pcm", "rate": wire.SAMPLE_RATE}


@dataclass(frozen=True, slots=True)
class Insert:
    """Write this transcript record (contract §4 shape) as a ``chat_messages_v2`` row."""

    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Annotate:
    """Merge ``metadata`` into the row ``record_id`` (a reply the user cut short)."""

    record_id: str
    metadata: dict[str, Any]


Write = Insert | Annotate


@dataclass(frozen=True, slots=True)
class DeviceVerdict:
    """What to do with one device frame."""

    upstream: str | None = None
    """The text to send upstream, or None."""
    refusal: str | None = None
    """An ``error`` event for the device instead (the frame was refused)."""
    ignored: tuple[str, ...] = ()
    """Relay-owned parts of a session.update or response.create that were dropped."""


@dataclass(frozen=True, slots=True)
class UpstreamVerdict:
    """What to do with one upstream event."""

    forward: bool = True
    writes: tuple[Write, ...] = ()
    """Rows to make durable before the event is forwarded."""
    malformed: str | None = None
    """An event the ledger needed but could not read (forwarded all the same)."""


def depth_exceeds(value: object, limit: int) -> bool:
    """Whether JSON ``value`` nests deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if d > limit:
            return True
        stack.extend((c, d + 1) for c in children if isinstance(c, dict | list))
    return False


def error_event(code: str, message: str, event_id: str | None, seq: int) -> str:
    """An upstream-shaped ``error`` event for the device (GA: the object form)."""
    return json.dumps({"type": "error", "event_id": f"relay_evt_{seq}", "error": {
        "type": "invalid_request_error", "code": code, "message": message, "param": None,
        "event_id": event_id}}, separators=(",", ":"))


def encode(event: dict[str, Any]) -> str:
    """Compact JSON text of an event."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Ledger:
    """One device connection's view of its upstream session."""

    agent: Agent
    device: str
    conversation_id: str
    voice: str
    model: str = ""
    """The model in effect, from session.created/updated (rows carry it)."""
    _pending_updates: deque[str] = field(default_factory=deque)
    _audio_bytes: OrderedDict[str, int] = field(default_factory=OrderedDict)
    _written: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _truncated: OrderedDict[str, int] = field(default_factory=OrderedDict)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.model = self.model or self.agent.model

    # ---------------------------------------------------------------- set-up

    def setup_update(self) -> dict[str, Any]:
        """The relay's own session.update: the agent's configuration, the device's voice."""
        a = self.agent
        session: dict[str, Any] = {
            "type": "realtime", "model": a.model, "instructions": a.instructions,
            "output_modalities": ["audio"],
            "audio": {"input": {"format": dict(_PCM_FORMAT),
                                "transcription": dict(a.transcription),
                                "turn_detection": a.turn_detection},
                      "output": {"format": dict(_PCM_FORMAT), "voice": self.voice}},
            "tools": list(a.tools), "tool_choice": "auto"}
        return {"type": "session.update", "event_id": SETUP_EVENT_ID, "session": session}

    def configured(self, session: dict[str, Any]) -> None:
        """Note the model and voice a session.created/updated reports."""
        model = session.get("model")
        if isinstance(model, str) and model:
            self.model = model
        audio = session.get("audio")
        out = audio.get("output") if isinstance(audio, dict) else None
        voice = out.get("voice") if isinstance(out, dict) else None
        if isinstance(voice, str) and voice:
            self.voice = voice

    # ---------------------------------------------------------------- device side

    def _refuse(self, code: str, message: str, event_id: object) -> DeviceVerdict:
        self._seq += 1
        eid = event_id if isinstance(event_id, str) else None
        return DeviceVerdict(refusal=error_event(code, message, eid, self._seq))

    def from_device(self, frame: str | bytes) -> DeviceVerdict:
        """Check one device frame; never raises."""
        if isinstance(frame, bytes):
            return self._refuse("invalid_event", "Expected a text WebSocket message, got "
                                "binary.", None)
        try:
            ev = json.loads(frame)
        except (ValueError, RecursionError):
            return self._refuse("invalid_json", "The relay could not parse the JSON.", None)
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
            return self._refuse("invalid_event", "Missing required parameter: 'type'.", None)
        t = ev["type"]
        eid = ev.get("event_id")
        if eid is not None and not isinstance(eid, str):
            return self._refuse("invalid_event", "'event_id' must be a string.", None)
        if t not in DEVICE_EVENTS:
            return self._refuse("relay_event_not_allowed", f"The relay does not pass "
                                f"{t[:80]!r} on; allowed: {', '.join(sorted(DEVICE_EVENTS))}.",
                                eid)
        if t == "input_audio_buffer.append":
            if not isinstance(ev.get("audio"), str):
                return self._refuse("invalid_value", "Invalid 'audio'. Expected base64.", eid)
            return DeviceVerdict(upstream=encode(ev))
        if depth_exceeds(ev, MAX_DEPTH):
            return self._refuse("invalid_event", f"The event nests deeper than {MAX_DEPTH} "
                                "levels.", eid)
        if t == "session.update":
            return self._session_update(ev)
        if t == "response.create" and "response" in ev:
            # per-response instructions, tools or model would bypass the agent's
            ev = {k: v for k, v in ev.items() if k != "response"}
            return DeviceVerdict(upstream=encode(ev), ignored=("response",))
        if t == "conversation.item.create":
            item = ev.get("item")
            if not isinstance(item, dict):
                return self._refuse("invalid_value", "Missing required parameter: 'item'.",
                                    eid)
            kind, role = item.get("type"), item.get("role")
            if not (kind == "function_call_output"
                    or kind == "message" and role in ("user", "assistant")):
                return self._refuse("relay_item_not_allowed", "Devices may add user and "
                                    "assistant messages and function call outputs only.", eid)
        return DeviceVerdict(upstream=encode(ev))

    def _session_update(self, ev: dict[str, Any]) -> DeviceVerdict:
        s = ev.get("session")
        eid = ev.get("event_id")
        if not isinstance(s, dict):
            return self._refuse("missing_required_parameter",
                                "Missing required parameter: 'session'.", eid)
        may = self.agent.device_may_set
        out: dict[str, Any] = {"type": "realtime"}
        ignored: list[str] = []
        for key, value in s.items():
            if key == "type":
                continue
            if key == "audio" and isinstance(value, dict):
                audio = self._audio_part(value, may, ignored)
                if audio:
                    out["audio"] = audio
            elif key == "tools" and "tools" in may and isinstance(value, list):
                out["tools"] = self._merged_tools(value)
            elif key == "tool_choice" and "tools" in may:
                out["tool_choice"] = value
            else:
                ignored.append(key)
        self._seq += 1
        event_id = eid if isinstance(eid, str) and eid else f"relay_dev_{self._seq}"
        self._pending_updates.append(event_id)
        while len(self._pending_updates) > _MAX_TRACKED:
            self._pending_updates.popleft()
        return DeviceVerdict(upstream=encode({"type": "session.update", "event_id": event_id,
                                              "session": out}), ignored=tuple(ignored))

    def _audio_part(self, audio: dict[str, Any], may: tuple[str, ...],
                    ignored: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side, allowed in (("input", "turn_detection"), ("output", "voice")):
            part = audio.get(side)
            if not isinstance(part, dict):
                if side in audio:
                    ignored.append(f"audio.{side}")
                continue
            for key, value in part.items():
                name = f"audio.{side}.{key}"
                if key != allowed or allowed not in may:
                    ignored.append(name)
                elif key == "voice" and value not in self.agent.voices:
                    ignored.append(f"{name} ({str(value)[:20]!r} is not one of "
                                   f"{', '.join(self.agent.voices)})")
                elif key == "turn_detection" and not (
                        value is None or isinstance(value, dict)
                        and value.get("type") in ("server_vad", "semantic_vad")):
                    ignored.append(f"{name} (not null, server_vad or semantic_vad)")
                else:
                    out.setdefault(side, {})[key] = value
        return out

    def _merged_tools(self, tools: list[Any]) -> list[Any]:
        """The agent's tools, plus the device's whose names the agent does not use."""
        names = {t["name"] for t in self.agent.tools}
        extra = [t for t in tools if isinstance(t, dict) and t.get("name") not in names]
        return [*self.agent.tools, *extra]

    # ---------------------------------------------------------------- upstream side

    def from_upstream(self, t: str, frame: str, d: dict[str, Any],
                      now: float) -> UpstreamVerdict:
        """Decide about one upstream event (``d`` is ``frame`` parsed, ``t`` its type)."""
        if t in _AUDIO_EVENTS:
            item_id, delta = d.get("item_id"), d.get("delta")
            if isinstance(item_id, str) and isinstance(delta, str):
                self._track(self._audio_bytes, item_id,
                            self._audio_bytes.get(item_id, 0) + len(delta) * 3 // 4)
            return UpstreamVerdict()
        if t not in _ACTED_ON:
            return UpstreamVerdict()
        try:
            ev = wire.parse_server_event(frame)
        except wire.MalformedEvent as e:
            return UpstreamVerdict(malformed=str(e))
        match ev:
            case wire.SessionUpdated():
                self.configured(ev.session)
                if self._pending_updates:
                    self._pending_updates.popleft()
                return UpstreamVerdict()
            case wire.ServerError():
                if ev.event_id is not None and ev.event_id in self._pending_updates:
                    self._pending_updates.remove(ev.event_id)
                return UpstreamVerdict()
            case wire.InputTranscriptionCompleted():
                text = ev.transcript.strip()
                if not text:
                    return UpstreamVerdict()
                return UpstreamVerdict(writes=self._insert(
                    "user", text, ev.item_id, now,
                    {"input_method": "realtime_voice", "model": self.model,
                     "item_id": ev.item_id}))
            case wire.AudioTranscriptDone():
                return UpstreamVerdict(writes=self._assistant(
                    ev.item_id, ev.response_id, ev.transcript, "completed", now))
            case wire.ResponseDone():
                writes: list[Write] = []
                for item_id, text in ev.transcripts.items():
                    if item_id in self._written and ev.status != "completed":
                        # GA ends a cancelled reply's transcript (.done) before saying
                        # it was cancelled: the row written then learns it now
                        writes.append(Annotate(
                            record_id(self.device, guard.storable(item_id)),
                            {"interrupted": True, "status": ev.status}))
                        continue
                    writes += self._assistant(item_id, ev.response_id, text, ev.status, now)
                return UpstreamVerdict(writes=tuple(writes))
            case wire.ItemTruncated():
                mark = {"interrupted": True, "heard_ms": ev.audio_end_ms}
                if ev.item_id in self._written:
                    return UpstreamVerdict(writes=(Annotate(
                        record_id(self.device, guard.storable(ev.item_id)), mark),))
                self._track(self._truncated, ev.item_id, ev.audio_end_ms)
                return UpstreamVerdict()
        return UpstreamVerdict()

    def _assistant(self, item_id: str, response_id: str, text: str, status: str,
                   now: float) -> tuple[Write, ...]:
        text = text.strip()
        if not text or item_id in self._written:
            return ()
        metadata: dict[str, Any] = {
            "voice": self.voice, "model": self.model, "item_id": item_id,
            "response_id": response_id, "interrupted": status != "completed"}
        if status != "completed":
            metadata["status"] = status
        audio = self._audio_bytes.pop(item_id, None)
        if audio is not None:
            metadata["audio_ms"] = round(wire.pcm_ms(audio))
        heard = self._truncated.pop(item_id, None)
        if heard is not None:
            metadata.update(interrupted=True, heard_ms=heard)
        return self._insert("assistant", text, item_id, now, metadata)

    def _insert(self, role: str, text: str, item_id: str, now: float,
                metadata: dict[str, Any]) -> tuple[Write, ...]:
        self._track(self._written, item_id, None)
        text, item_id = guard.storable(text), guard.storable(item_id)
        metadata = guard.storable(metadata)
        t = Transcript(role=role, text=text, item_id=item_id,
                       conversation_id=self.conversation_id, metadata=metadata)
        return (Insert(make_record(t, device_id=self.device, created_at=now)),)

    @staticmethod
    def _track(table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _MAX_TRACKED:
            table.popitem(last=False)
