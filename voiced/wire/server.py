"""Server events we act on: frozen dataclasses built by :func:`parse_server_event`."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from voiced import guard
from voiced.wire.fields import (
    error_message,
    expiry,
    opt_id,
    req_id,
    req_int,
    req_obj,
    req_pcm,
    req_str,
)
from voiced.wire.frames import (
    MAX_ID_CHARS,
    MalformedEvent,
    load_frame,
)

logger = logging.getLogger("voiced.wire")
# a model name: letters, digits and . _ : - (gpt-realtime-2025-08-28, ft:...), not too long
_MODEL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """``session.created``: the session exists; ``expires_at`` is epoch seconds or None."""

    session_id: str | None
    expires_at: float | None
    model: str | None = None
    """``session.model``, when it is a plausible model name (see :func:`session_model`)."""


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """``session.updated``: the effective configuration (raw) and the model it names."""

    session: dict[str, Any]
    model: str | None = None


@dataclass(frozen=True, slots=True)
class BufferCleared:
    """``input_audio_buffer.cleared``: the answer to ``input_audio_buffer.clear``.

    It echoes no client event id; the core uses it as a fence (core/setup.py).
    """


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
    | FunctionCallDone | BufferCleared
    | ServerError | RelayConversationCreated | Unhandled
)


def session_model(session: dict[str, Any]) -> str | None:
    """``session.model`` if it is a plausible model name, else None.

    Records carry it (behind a relay the relay chooses the model), so it must be short
    printable ASCII; anything else is ignored rather than the whole event refused.
    """
    model = session.get("model")
    if isinstance(model, str) and _MODEL_RE.fullmatch(model):
        return model
    if model is not None and guard.should_log("wire:session-model") is not None:
        logger.warning("ignoring an implausible session.model %s", guard.printable(model, 80))
    return None


def _session_created(d: dict[str, Any]) -> SessionCreated:
    s = req_obj(d, "session")
    return SessionCreated(session_id=opt_id(s, "id"), expires_at=expiry(s.get("expires_at")),
                          model=session_model(s))


def _session_updated(d: dict[str, Any]) -> SessionUpdated:
    s = req_obj(d, "session")
    return SessionUpdated(session=s, model=session_model(s))


def _audio_delta(d: dict[str, Any]) -> AudioDelta:
    audio = req_pcm(d)
    return AudioDelta(response_id=req_id(d, "response_id"), item_id=req_id(d, "item_id"),
                      content_index=req_int(d, "content_index", 0), pcm=audio)


def _response_done(d: dict[str, Any]) -> ResponseDone:
    r = req_obj(d, "response")
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
    return ResponseDone(response_id=req_id(r, "id"),
                        status=status[:40] if isinstance(status, str) else "unknown",
                        reason=reason[:200] if isinstance(reason, str) else None,
                        transcripts=transcripts)


def _output_item_done(d: dict[str, Any]) -> FunctionCallDone | Unhandled:
    item = req_obj(d, "item")
    if item.get("type") != "function_call":
        return Unhandled(type=str(d["type"]), raw=d)
    return FunctionCallDone(response_id=req_id(d, "response_id"), item_id=req_id(item, "id"),
                            call_id=req_id(item, "call_id"), name=req_id(item, "name"),
                            arguments=req_str(item, "arguments"),
                            complete=item.get("status") in (None, "completed"))


def _error(d: dict[str, Any]) -> ServerError:
    e = d.get("error")
    if isinstance(e, str):  # some relays send {"type": "error", "error": "text"}
        return ServerError(type="relay_error", code=None, message=error_message(e), param=None,
                           event_id=None)
    if not isinstance(e, dict):
        msg = d.get("msg") or d.get("message")  # and some {"type":"error","msg":...}
        if isinstance(msg, str):
            return ServerError(type="relay_error", code=None, message=error_message(msg),
                               param=None, event_id=None)
        raise MalformedEvent("error: field 'error' must be an object")
    kind = e.get("type")
    return ServerError(type=kind[:MAX_ID_CHARS] if isinstance(kind, str) and kind else "unknown",
                       code=opt_id(e, "code"), message=error_message(e.get("message")),
                       param=opt_id(e, "param"), event_id=opt_id(e, "event_id"))


def _failed(d: dict[str, Any]) -> InputTranscriptionFailed:
    e = d.get("error")
    return InputTranscriptionFailed(item_id=req_id(d, "item_id"), message=error_message(
        e.get("message") if isinstance(e, dict) else e))


Parser = Callable[[dict[str, Any]], ServerEvent]
"""Builds one typed event from a decoded frame; raises :class:`MalformedEvent`."""

_PARSERS: Final[dict[str, Parser]] = {
    "session.created": _session_created,
    "session.updated": _session_updated,
    "input_audio_buffer.cleared": lambda d: BufferCleared(),
    "input_audio_buffer.speech_started": lambda d: SpeechStarted(
        audio_start_ms=req_int(d, "audio_start_ms", 0), item_id=req_id(d, "item_id")),
    "input_audio_buffer.speech_stopped": lambda d: SpeechStopped(
        audio_end_ms=req_int(d, "audio_end_ms", 0), item_id=req_id(d, "item_id")),
    "input_audio_buffer.committed": lambda d: BufferCommitted(item_id=req_id(d, "item_id")),
    "conversation.item.input_audio_transcription.completed": lambda d:
        InputTranscriptionCompleted(item_id=req_id(d, "item_id"),
                                    content_index=req_int(d, "content_index", 0),
                                    transcript=req_str(d, "transcript")),
    "conversation.item.input_audio_transcription.failed": _failed,
    "response.created": lambda d: ResponseCreated(response_id=req_id(req_obj(d, "response"), "id")),
    "response.done": _response_done,
    "response.output_audio.delta": _audio_delta,
    "response.output_audio.done": lambda d: AudioDone(response_id=req_id(d, "response_id"),
                                                      item_id=req_id(d, "item_id")),
    "response.output_audio_transcript.done": lambda d: AudioTranscriptDone(
        response_id=req_id(d, "response_id"), item_id=req_id(d, "item_id"),
        content_index=req_int(d, "content_index", 0), transcript=req_str(d, "transcript")),
    "response.output_audio_transcript.delta": lambda d: AudioTranscriptDelta(
        response_id=req_id(d, "response_id"), item_id=req_id(d, "item_id"),
        delta=req_str(d, "delta")),
    "response.function_call_arguments.done": lambda d: FunctionCallDone(
        response_id=req_id(d, "response_id"), item_id=req_id(d, "item_id"),
        call_id=req_id(d, "call_id"), name=req_id(d, "name"), arguments=req_str(d, "arguments")),
    "response.output_item.done": _output_item_done,
    "conversation.item.truncated": lambda d: ItemTruncated(
        item_id=req_id(d, "item_id"), audio_end_ms=req_int(d, "audio_end_ms", 0)),
    "error": _error,
    "conversation_created": lambda d: RelayConversationCreated(
        conversation_id=req_id(d, "conversation_id")),
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
        return parser(d)
    except MalformedEvent:
        raise
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as e:
        raise MalformedEvent(f"{t}: {guard.printable(e, 120)}") from None
