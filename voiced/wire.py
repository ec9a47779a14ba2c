r"""Realtime API (GA dialect) wire types.

Client events we send are ``TypedDict`` params built by small functions; server events we
act on are frozen dataclasses built by :func:`parse_server_event` through one registry.
Any other event type parses to :class:`Unhandled`; a frame that is not a JSON object with
a string ``type``, or whose fields have the wrong types, raises :class:`MalformedEvent`.

Server frames are hostile input (docs/architecture.md, "Hostile input"): nesting deeper
than :data:`MAX_DEPTH` is refused before anything recurses on it, ids longer than
:data:`MAX_ID_CHARS` are refused, and every string is valid Unicode when it leaves this
module (a lone UTF-16 surrogate, which a JSON escape such as ``\ud83d`` can carry and no
UTF-8 encoder accepts, becomes U+FFFD), except a transcript delta's text: a relay may cut a
surrogate pair across two deltas, so the core joins them before repairing.

NOTE: the only audio format used on the wire is PCM16 LE mono at 24 kHz (GA's
``{"type": "audio/pcm", "rate": 24000}``); :data:`SAMPLE_RATE` pins it in one place.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Final, Literal, NotRequired, TypedDict

from voiced import guard

logger = logging.getLogger(__name__)

SAMPLE_RATE: Final = 24_000
"""Hz; the only PCM rate the GA Realtime API accepts and produces."""
BYTES_PER_SAMPLE: Final = 2
MAX_DEPTH: Final = 64
"""Deepest nesting of arrays and objects accepted in a server frame (GA events nest
about 6 deep; a session.updated echoing tool schemas a few more)."""
MAX_ID_CHARS: Final = 256
"""Longest id (item, response, call, event, conversation) or tool name accepted."""
MAX_MESSAGE_CHARS: Final = 1000
"""A server error message is cut to this (it only ever reaches a log line)."""
LATEST_EPOCH_S: Final = 253_402_300_799.0
"""9999-12-31T23:59:59Z: a later ``expires_at`` is not a time anyone can show."""

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")  # in raw JSON text


def valid_text(text: str) -> str:
    r"""``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD.

    Python strings can hold lone UTF-16 surrogates (a JSON escape such as ``\ud83d``
    gives one), which no UTF-8 encoder accepts: a record or a re-seed holding one cannot
    be written or sent. Cheap when there are none (one regex search).
    """
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate counts as the 3 it would take)."""
    return len(text.encode("utf-8", "surrogatepass"))


def pcm_ms(nbytes: int) -> float:
    """Milliseconds of PCM16 mono 24 kHz audio in ``nbytes`` bytes."""
    return nbytes / BYTES_PER_SAMPLE / SAMPLE_RATE * 1000.0


class MalformedEvent(ValueError):
    """A server frame that is not a well-formed Realtime event."""


# --------------------------------------------------------------------------------------
# Client events (what we send)


class AudioFormatParam(TypedDict):
    """GA audio format."""

    type: Literal["audio/pcm"]
    rate: int


class TurnDetectionParam(TypedDict, total=False):
    """GA ``audio.input.turn_detection``."""

    type: str
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    eagerness: str
    create_response: bool
    interrupt_response: bool


class TranscriptionParam(TypedDict, total=False):
    """GA ``audio.input.transcription``."""

    model: str
    language: str
    prompt: str


class AudioInputParam(TypedDict):
    """GA ``audio.input``."""

    format: AudioFormatParam
    transcription: TranscriptionParam
    turn_detection: TurnDetectionParam | None


class AudioOutputParam(TypedDict):
    """GA ``audio.output``."""

    format: AudioFormatParam
    voice: str


class SessionAudioParam(TypedDict):
    """GA ``session.audio``."""

    input: AudioInputParam
    output: AudioOutputParam


class FunctionToolParam(TypedDict):
    """One function tool the model may call (GA ``session.tools[]``)."""

    type: Literal["function"]
    name: str
    description: str
    parameters: dict[str, Any]


class SessionParam(TypedDict):
    """GA ``session.update.session`` for a realtime (speech-to-speech) session."""

    type: Literal["realtime"]
    model: NotRequired[str]
    instructions: str
    output_modalities: list[str]
    audio: SessionAudioParam
    tools: NotRequired[list[FunctionToolParam]]
    tool_choice: NotRequired[str]


class SessionUpdateParam(TypedDict):
    """``session.update``."""

    type: Literal["session.update"]
    event_id: str
    session: SessionParam


class InputAudioBufferAppendParam(TypedDict):
    """``input_audio_buffer.append``; ``audio`` is base64 PCM16."""

    type: Literal["input_audio_buffer.append"]
    event_id: str
    audio: str


class InputAudioBufferCommitParam(TypedDict):
    """``input_audio_buffer.commit``."""

    type: Literal["input_audio_buffer.commit"]
    event_id: str


class InputAudioBufferClearParam(TypedDict):
    """``input_audio_buffer.clear``."""

    type: Literal["input_audio_buffer.clear"]
    event_id: str


class ResponseCreateParam(TypedDict):
    """``response.create``."""

    type: Literal["response.create"]
    event_id: str


class ResponseCancelParam(TypedDict):
    """``response.cancel``."""

    type: Literal["response.cancel"]
    event_id: str
    response_id: NotRequired[str]


class ConversationItemTruncateParam(TypedDict):
    """``conversation.item.truncate``: what the user really heard of an assistant item."""

    type: Literal["conversation.item.truncate"]
    event_id: str
    item_id: str
    content_index: int
    audio_end_ms: int


class TextContentParam(TypedDict):
    """One text part of a message item: ``input_text`` (user), ``output_text`` (assistant)."""

    type: Literal["input_text", "output_text"]
    text: str


class MessageItemParam(TypedDict):
    """A message item in the GA item format."""

    type: Literal["message"]
    role: Literal["user", "assistant"]
    content: list[TextContentParam]


class FunctionCallOutputItemParam(TypedDict):
    """The result of a function call, for the model to speak about."""

    type: Literal["function_call_output"]
    call_id: str
    output: str


class ConversationItemCreateParam(TypedDict):
    """``conversation.item.create``: earlier turns (re-seeding) or a tool's result."""

    type: Literal["conversation.item.create"]
    event_id: str
    item: MessageItemParam | FunctionCallOutputItemParam


ClientEvent = (
    SessionUpdateParam | InputAudioBufferAppendParam | InputAudioBufferCommitParam
    | InputAudioBufferClearParam | ResponseCreateParam | ResponseCancelParam
    | ConversationItemTruncateParam | ConversationItemCreateParam
)


def text_item(event_id: str, role: Literal["user", "assistant"],
              text: str) -> ConversationItemCreateParam:
    """Build ``conversation.item.create`` for one earlier turn of the conversation."""
    return {"type": "conversation.item.create", "event_id": event_id,
            "item": {"type": "message", "role": role, "content": [
                {"type": "input_text" if role == "user" else "output_text", "text": text}]}}


def function_output_item(event_id: str, call_id: str,
                         output: str) -> ConversationItemCreateParam:
    """Build ``conversation.item.create`` carrying a tool's result (a JSON string)."""
    return {"type": "conversation.item.create", "event_id": event_id,
            "item": {"type": "function_call_output", "call_id": call_id, "output": output}}


def audio_append(event_id: str, pcm: bytes) -> InputAudioBufferAppendParam:
    """Build ``input_audio_buffer.append`` for 24 kHz PCM16 mono ``pcm``."""
    return {"type": "input_audio_buffer.append", "event_id": event_id,
            "audio": base64.b64encode(pcm).decode("ascii")}


def encode(event: ClientEvent) -> str:
    """Serialise a client event to the text frame sent on the socket.

    The text is always valid Unicode: a lone surrogate that got into an event anyway
    becomes U+FFFD rather than an encoding error that would cost the connection.
    """
    return valid_text(json.dumps(event, ensure_ascii=False, separators=(",", ":")))


def describe(event: ClientEvent | dict[str, Any]) -> str:
    """A log-safe one-line summary of a client event (never the audio payload)."""
    t = str(event.get("type"))
    if t == "input_audio_buffer.append":
        n = len(str(event.get("audio", ""))) * 3 // 4
        return f"{t} ({pcm_ms(n):.0f} ms)"
    if t == "conversation.item.truncate":
        return f"{t} item={event.get('item_id')} audio_end_ms={event.get('audio_end_ms')}"
    item = event.get("item")
    if t == "conversation.item.create" and isinstance(item, dict):
        return f"{t} ({item.get('type')})"
    return t


# --------------------------------------------------------------------------------------
# Server events (what we act on)


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """``session.created``: the session exists; ``expires_at`` is epoch seconds or None."""

    session_id: str | None
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """``session.updated``: the effective configuration (raw)."""

    session: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """``input_audio_buffer.speech_started`` (server VAD)."""

    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """``input_audio_buffer.speech_stopped`` (server VAD)."""

    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class BufferCommitted:
    """``input_audio_buffer.committed``: a user item was created from the buffer."""

    item_id: str


@dataclass(frozen=True, slots=True)
class InputTranscriptionCompleted:
    """``conversation.item.input_audio_transcription.completed``: the user's words."""

    item_id: str
    content_index: int
    transcript: str


@dataclass(frozen=True, slots=True)
class InputTranscriptionFailed:
    """``conversation.item.input_audio_transcription.failed``."""

    item_id: str
    message: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    """``response.created``."""

    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """``response.done``; ``transcripts`` maps item_id → transcript of audio outputs."""

    response_id: str
    status: str
    reason: str | None
    transcripts: dict[str, str]


@dataclass(frozen=True, slots=True)
class AudioDelta:
    """``response.output_audio.delta``: decoded PCM16 24 kHz reply audio."""

    response_id: str
    item_id: str
    content_index: int
    pcm: bytes


@dataclass(frozen=True, slots=True)
class AudioDone:
    """``response.output_audio.done``: no more audio for this item."""

    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class AudioTranscriptDone:
    """``response.output_audio_transcript.done``: the assistant's words for an item."""

    response_id: str
    item_id: str
    content_index: int
    transcript: str


@dataclass(frozen=True, slots=True)
class AudioTranscriptDelta:
    """``response.output_audio_transcript.delta``: more of the assistant's words.

    Kept only in case the ``.done`` never comes (the connection drops mid-reply).
    """

    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    """``conversation.item.truncated``."""

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class FunctionCallDone:
    """The model called a tool (``response.function_call_arguments.done``).

    ``response.output_item.done`` with a ``function_call`` item reports the same call
    again; the core dedupes by ``call_id``. ``arguments`` is the model's JSON, unchecked.
    """

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str
    complete: bool = True
    """False for an ``incomplete`` item: the response was cancelled mid-call (the user
    spoke), and ``arguments`` may be cut short."""


@dataclass(frozen=True, slots=True)
class ServerError:
    """``error``; ``event_id`` is the client event it refers to, if any."""

    type: str
    code: str | None
    message: str
    param: str | None
    event_id: str | None


@dataclass(frozen=True, slots=True)
class RelayConversationCreated:
    """A relay's own ``conversation_created`` event naming the conversation it made."""

    conversation_id: str


@dataclass(frozen=True, slots=True)
class Unhandled:
    """Any other event type; kept raw, logged at DEBUG, otherwise ignored."""

    type: str
    raw: dict[str, Any]


ServerEvent = (
    SessionCreated | SessionUpdated | SpeechStarted | SpeechStopped | BufferCommitted
    | InputTranscriptionCompleted | InputTranscriptionFailed | ResponseCreated | ResponseDone
    | AudioDelta | AudioDone | AudioTranscriptDone | AudioTranscriptDelta | ItemTruncated
    | FunctionCallDone
    | ServerError | RelayConversationCreated | Unhandled
)


def _s(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise MalformedEvent(f"{d.get('type')}: field {key!r} must be a string, got {v!r:.40}")
    return v


def _id(d: dict[str, Any], key: str) -> str:
    v = _s(d, key)
    if len(v) > MAX_ID_CHARS:
        raise MalformedEvent(f"{d.get('type')}: field {key!r} is {len(v)} characters long "
                             f"(at most {MAX_ID_CHARS})")
    return v


def _opt_id(d: dict[str, Any], key: str) -> str | None:
    return None if d.get(key) is None else _id(d, key)


def _opt_s(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is None or isinstance(v, str):
        return v
    raise MalformedEvent(f"{d.get('type')}: field {key!r} must be a string or null")


def _i(d: dict[str, Any], key: str, default: int | None = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise MalformedEvent(f"{d.get('type')}: field {key!r} must be an integer, got {v!r:.40}")
    return v


def _obj(d: dict[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    if not isinstance(v, dict):
        raise MalformedEvent(f"{d.get('type')}: field {key!r} must be an object")
    return v


def _expiry(value: object, event: str = "session.created") -> float | None:
    """``expires_at`` as epoch seconds, or None when it is not a time at all.

    Infinity, NaN, 1e300, a negative number or a string are not refused as malformed:
    that would drop session.created and leave the session unconfigured. The session's
    end is then noticed when the server ends it (``session_expired``).
    """
    if value is None:
        return None
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            exp = float(value)
        except OverflowError:  # an integer with hundreds of digits
            exp = math.inf
        if math.isfinite(exp) and 0 < exp <= LATEST_EPOCH_S:
            return exp
    if guard.should_log("wire:expires_at") is not None:
        logger.warning("%s: expires_at %s is not a time; ignoring it (the "
                       "session's end is noticed when the server ends it)",
                       event, guard.printable(repr(value), 60))
    return None


def _session_created(d: dict[str, Any]) -> SessionCreated:
    s = _obj(d, "session")
    return SessionCreated(session_id=_opt_id(s, "id"), expires_at=_expiry(s.get("expires_at")))


def _pcm(d: dict[str, Any], key: str = "delta") -> bytes:
    """Base64 PCM16 from field ``key``: valid base64, whole samples."""
    try:
        pcm = base64.b64decode(_s(d, key), validate=True)
    except binascii.Error as e:
        raise MalformedEvent(f"{d.get('type')}: {key} is not base64 ({e})") from None
    if len(pcm) % BYTES_PER_SAMPLE:
        raise MalformedEvent(f"{d.get('type')}: {key} has an odd number of bytes ({len(pcm)})")
    return pcm


def _audio_delta(d: dict[str, Any]) -> AudioDelta:
    pcm = _pcm(d)
    return AudioDelta(response_id=_id(d, "response_id"), item_id=_id(d, "item_id"),
                      content_index=_i(d, "content_index", 0), pcm=pcm)


def _response_done(d: dict[str, Any]) -> ResponseDone:
    r = _obj(d, "response")
    transcripts: dict[str, str] = {}
    output = r.get("output") or []
    if not isinstance(output, list):
        raise MalformedEvent("response.done: response.output must be a list")
    for item in output:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or len(
                item["id"]) > MAX_ID_CHARS:
            continue
        for part in item.get("content") or []:
            if isinstance(part, dict) and isinstance(part.get("transcript"), str):
                transcripts[item["id"]] = part["transcript"]
    details = r.get("status_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    status = r.get("status") or "completed"
    return ResponseDone(response_id=_id(r, "id"),
                        status=status[:40] if isinstance(status, str) else "unknown",
                        reason=reason[:200] if isinstance(reason, str) else None,
                        transcripts=transcripts)


def _output_item_done(d: dict[str, Any]) -> FunctionCallDone | Unhandled:
    item = _obj(d, "item")
    if item.get("type") != "function_call":
        return Unhandled(type=str(d["type"]), raw=d)
    return FunctionCallDone(response_id=_id(d, "response_id"), item_id=_id(item, "id"),
                            call_id=_id(item, "call_id"), name=_id(item, "name"),
                            arguments=_s(item, "arguments"),
                            complete=item.get("status") in (None, "completed"))


def _message(value: object) -> str:
    text = value if isinstance(value, str) else ""
    return text[:MAX_MESSAGE_CHARS]


def _error(d: dict[str, Any]) -> ServerError:
    e = d.get("error")
    if isinstance(e, str):  # some relays send {"type": "error", "error": "text"}
        return ServerError(type="relay_error", code=None, message=_message(e), param=None,
                           event_id=None)
    if not isinstance(e, dict):
        msg = d.get("msg") or d.get("message")  # and some {"type":"error","msg":...}
        if isinstance(msg, str):
            return ServerError(type="relay_error", code=None, message=_message(msg),
                               param=None, event_id=None)
        raise MalformedEvent("error: field 'error' must be an object")
    kind = e.get("type")
    return ServerError(type=kind[:MAX_ID_CHARS] if isinstance(kind, str) and kind else "unknown",
                       code=_opt_id(e, "code"), message=_message(e.get("message")),
                       param=_opt_id(e, "param"), event_id=_opt_id(e, "event_id"))


def _failed(d: dict[str, Any]) -> InputTranscriptionFailed:
    e = d.get("error")
    return InputTranscriptionFailed(item_id=_id(d, "item_id"), message=_message(
        e.get("message") if isinstance(e, dict) else e))


_PARSERS: Final[dict[str, Any]] = {
    "session.created": _session_created,
    "session.updated": lambda d: SessionUpdated(session=_obj(d, "session")),
    "input_audio_buffer.speech_started": lambda d: SpeechStarted(
        audio_start_ms=_i(d, "audio_start_ms", 0), item_id=_id(d, "item_id")),
    "input_audio_buffer.speech_stopped": lambda d: SpeechStopped(
        audio_end_ms=_i(d, "audio_end_ms", 0), item_id=_id(d, "item_id")),
    "input_audio_buffer.committed": lambda d: BufferCommitted(item_id=_id(d, "item_id")),
    "conversation.item.input_audio_transcription.completed": lambda d:
        InputTranscriptionCompleted(item_id=_id(d, "item_id"),
                                    content_index=_i(d, "content_index", 0),
                                    transcript=_s(d, "transcript")),
    "conversation.item.input_audio_transcription.failed": _failed,
    "response.created": lambda d: ResponseCreated(response_id=_id(_obj(d, "response"), "id")),
    "response.done": _response_done,
    "response.output_audio.delta": _audio_delta,
    "response.output_audio.done": lambda d: AudioDone(response_id=_id(d, "response_id"),
                                                      item_id=_id(d, "item_id")),
    "response.output_audio_transcript.done": lambda d: AudioTranscriptDone(
        response_id=_id(d, "response_id"), item_id=_id(d, "item_id"),
        content_index=_i(d, "content_index", 0), transcript=_s(d, "transcript")),
    "response.output_audio_transcript.delta": lambda d: AudioTranscriptDelta(
        response_id=_id(d, "response_id"), item_id=_id(d, "item_id"), delta=_s(d, "delta")),
    "response.function_call_arguments.done": lambda d: FunctionCallDone(
        response_id=_id(d, "response_id"), item_id=_id(d, "item_id"),
        call_id=_id(d, "call_id"), name=_id(d, "name"), arguments=_s(d, "arguments")),
    "response.output_item.done": _output_item_done,
    "conversation.item.truncated": lambda d: ItemTruncated(
        item_id=_id(d, "item_id"), audio_end_ms=_i(d, "audio_end_ms", 0)),
    "error": _error,
    "conversation_created": lambda d: RelayConversationCreated(
        conversation_id=_id(d, "conversation_id")),
}
# NOTE: some adapters report GA models emitting the legacy beta names; accepting them costs
# nothing (realtime-protocol.md §1.4).
_PARSERS["response.audio.delta"] = _PARSERS["response.output_audio.delta"]
_PARSERS["response.audio.done"] = _PARSERS["response.output_audio.done"]
_PARSERS["response.audio_transcript.done"] = _PARSERS["response.output_audio_transcript.done"]
_PARSERS["response.audio_transcript.delta"] = _PARSERS[
    "response.output_audio_transcript.delta"]
# a transcript delta's text keeps its surrogate halves: the core joins deltas first
_RAW_DELTA_TYPES: Final = frozenset({"response.output_audio_transcript.delta",
                                     "response.audio_transcript.delta"})


def _too_deep(value: object) -> bool:
    """Whether arrays/objects nest deeper than MAX_DEPTH (iteratively: never recurses)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _repaired(value: Any) -> Any:
    """``value`` with every string (keys too) made valid text; depth is already bounded."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, list):
        return [_repaired(v) for v in value]
    if isinstance(value, dict):
        return {valid_text(k): _repaired(v) for k, v in value.items()}
    return value


def load_frame(frame: str | bytes, raw_deltas: frozenset[str] = frozenset()
               ) -> dict[str, Any]:
    """Decode one server text frame into a JSON object with a string ``type``.

    The frame-level checks every server event goes through (the Realtime events here,
    the GPT-Live ones in :mod:`voiced.live.wire`): text only, JSON, nesting, an object,
    a bounded ``type``, and every string valid Unicode except the ``delta`` of the types
    in ``raw_deltas`` (transcript deltas: the core joins them before repairing).

    Raises:
        MalformedEvent: binary data, not JSON, too deep, not an object, no string type.
    """
    if isinstance(frame, bytes):
        raise MalformedEvent(f"binary frame of {len(frame)} bytes (the API sends text only)")
    try:
        d = json.loads(frame)
    except RecursionError:  # the C parser's own limit (about 1000 levels)
        raise MalformedEvent("nested too deeply") from None
    except ValueError as e:
        raise MalformedEvent(f"not JSON: {guard.printable(e, 120)}") from None
    # str.count is a C scan; only a frame with that many brackets can be that deep
    if frame.count("[") + frame.count("{") > MAX_DEPTH and _too_deep(d):
        raise MalformedEvent(f"nested more than {MAX_DEPTH} levels deep")
    if not isinstance(d, dict):
        raise MalformedEvent(f"not a JSON object but {type(d).__name__}")
    event: dict[str, Any] = d
    t = event.get("type")
    if not isinstance(t, str) or len(t) > MAX_ID_CHARS:
        raise MalformedEvent("no string 'type' field")
    if _SURROGATE_ESCAPE.search(frame) is not None:  # only escapes can make surrogates
        delta = event.get("delta") if t in raw_deltas else None
        event = _repaired(event)
        if isinstance(delta, str):
            event["delta"] = delta
    return event


def parse_server_event(frame: str | bytes) -> ServerEvent:
    """Parse one server text frame.

    Returns:
        A typed event, or :class:`Unhandled` for a type voiced does not act on.

    Raises:
        MalformedEvent: binary data, not JSON, not an object, no string ``type``, or a
            known type whose fields are missing or of the wrong type.
    """
    d = load_frame(frame, _RAW_DELTA_TYPES)
    t = d["type"]
    parser = _PARSERS.get(t)
    if parser is None:
        return Unhandled(type=t, raw=d)
    try:
        return parser(d)  # type: ignore[no-any-return]
    except MalformedEvent:
        raise
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as e:
        raise MalformedEvent(f"{t}: {guard.printable(e, 120)}") from None
