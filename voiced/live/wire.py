r"""GPT-Live wire types (``wss://…/v1/live/sessions``), in :mod:`voiced.wire`'s style.

Client events the device sends are ``TypedDict`` params built by small functions; the
server events it acts on are frozen dataclasses built by :func:`parse_server_event`
through one registry. Any other type parses to :class:`Unhandled`; anything malformed
raises :class:`voiced.wire.MalformedEvent` (the Realtime parser's, so one handler serves
both backends) and nothing else.

Server frames are hostile input, with the Realtime parser's rules and the same frame
checks (:func:`voiced.wire.load_frame`): text only, nesting at most
:data:`voiced.wire.MAX_DEPTH`, ids at most :data:`voiced.wire.MAX_ID_CHARS` characters,
every string valid Unicode except a transcript delta's text (a surrogate pair may be cut
across two deltas; the core joins them first). Timeline positions must be integers
between 0 and :data:`MAX_TIMELINE_MS`, an interval's end not before its start.

The session's audio format is PCM16 LE mono at 24 kHz (:data:`voiced.wire.SAMPLE_RATE`)
for input *and* output: GPT-Live has one format per session, chosen in ``session.start``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any, Final, Literal, NotRequired, TypedDict

from voiced import guard
from voiced.wire import (
    SAMPLE_RATE,
    MalformedEvent,
    error_message,
    expiry,
    load_frame,
    opt_id,
    pcm_ms,
    req_id,
    req_int,
    req_obj,
    req_pcm,
    req_str,
    valid_text,
)

MAX_TIMELINE_MS: Final = 10**10
"""A timeline position beyond this (115 days) is not a session's."""
MAX_USAGE_S: Final = 10**9
"""Billed seconds beyond this are not a session's; such a usage figure is ignored."""

# ------------------------------------------------------------------------- client events


class AudioFormatParam(TypedDict):
    """``audio.format``: one format for input and output, immutable after start."""

    type: Literal["audio/pcm"]
    rate: int


class AudioOutputParam(TypedDict):
    """``audio.output``."""

    voice: str


class AudioParam(TypedDict):
    """``session.audio``."""

    format: AudioFormatParam
    output: AudioOutputParam


class ClientDelegationParam(TypedDict):
    """``session.delegation`` for work the device does itself."""

    type: Literal["client"]
    acknowledgement_delay_ms: int


class TextPartParam(TypedDict):
    """The one text part of a startup history message."""

    type: Literal["input_text", "output_text"]
    text: str


class InitialItemParam(TypedDict):
    """One message of ``session.input`` (the startup history)."""

    role: Literal["user", "assistant"]
    content: list[TextPartParam]


class SessionConfigParam(TypedDict):
    """``session.start.session``; everything here is immutable for the session."""

    model: str
    instructions: str
    audio: AudioParam
    delegation: ClientDelegationParam
    input: NotRequired[list[InitialItemParam]]
    safety_identifier: NotRequired[str]


class SessionStartParam(TypedDict):
    """``session.start``: the first thing sent; the server is silent until it."""

    type: Literal["session.start"]
    event_id: str
    session: SessionConfigParam


class InputAudioAppendParam(TypedDict):
    """``session.input_audio.append``; never acknowledged, so it carries no event id."""

    type: Literal["session.input_audio.append"]
    audio: str


class MuteParam(TypedDict):
    """``session.input_audio.mute`` / ``.unmute`` (acknowledged ``…muted``/``…unmuted``)."""

    type: Literal["session.input_audio.mute", "session.input_audio.unmute"]
    event_id: str


class ContextAppendParam(TypedDict):
    """``session.{commentary,thinking,instructions}.append``; ``delegation_id`` nullable."""

    type: Literal["session.commentary.append", "session.thinking.append",
                  "session.instructions.append"]
    event_id: str
    content: str
    delegation_id: str | None


class SessionCloseParam(TypedDict):
    """``session.close``; answered by ``session.closed`` with the final usage."""

    type: Literal["session.close"]
    event_id: str


ClientEvent = (SessionStartParam | InputAudioAppendParam | MuteParam | ContextAppendParam
               | SessionCloseParam)

MAX_APPEND_CHARS: Final = 1500
"""Characters of one context append the device sends. The service refuses more than 500
tokens (``invalid_value``); at about 4 characters a token 1500 stay clear of that even
for text that tokenizes badly (digits, JSON)."""


def history_item(role: Literal["user", "assistant"], text: str) -> InitialItemParam:
    """One earlier turn for ``session.input``."""
    return {"role": role, "content": [
        {"type": "input_text" if role == "user" else "output_text", "text": text}]}


def session_start(event_id: str, *, model: str, instructions: str, voice: str,
                  ack_delay_ms: int, history: list[InitialItemParam],
                  safety_identifier: str | None = None) -> SessionStartParam:
    """Build ``session.start`` for a client-delegation session at PCM16 24 kHz."""
    session: SessionConfigParam = {
        "model": model,
        "instructions": instructions,
        "audio": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                  "output": {"voice": voice}},
        "delegation": {"type": "client", "acknowledgement_delay_ms": ack_delay_ms},
    }
    if history:
        session["input"] = history
    if safety_identifier:
        session["safety_identifier"] = safety_identifier
    return {"type": "session.start", "event_id": event_id, "session": session}


def audio_append(pcm: bytes) -> InputAudioAppendParam:
    """Build ``session.input_audio.append`` for 24 kHz PCM16 mono ``pcm``."""
    return {"type": "session.input_audio.append",
            "audio": base64.b64encode(pcm).decode("ascii")}


def mute(event_id: str, muted: bool) -> MuteParam:
    """Build ``session.input_audio.mute`` (``muted``) or ``.unmute``."""
    return {"type": "session.input_audio.mute" if muted else "session.input_audio.unmute",
            "event_id": event_id}


def context_append(event_id: str, kind: Literal["commentary", "thinking", "instructions"],
                   content: str, delegation_id: str | None) -> ContextAppendParam:
    """Build a context append; ``content`` is cut to :data:`MAX_APPEND_CHARS`."""
    if len(content) > MAX_APPEND_CHARS:
        content = content[:MAX_APPEND_CHARS - 1] + "…"
    kinds: dict[str, Literal["session.commentary.append", "session.thinking.append",
                             "session.instructions.append"]] = {
        "commentary": "session.commentary.append", "thinking": "session.thinking.append",
        "instructions": "session.instructions.append"}
    return {"type": kinds[kind], "event_id": event_id, "content": content,
            "delegation_id": delegation_id}


def session_close(event_id: str) -> SessionCloseParam:
    """Build ``session.close``."""
    return {"type": "session.close", "event_id": event_id}


def encode(event: ClientEvent) -> str:
    """The text frame for a client event (always valid Unicode)."""
    return valid_text(json.dumps(event, ensure_ascii=False, separators=(",", ":")))


def describe(event: ClientEvent | dict[str, Any]) -> str:
    """A log-safe one-line summary of a client event (never audio or spoken content)."""
    t = str(event.get("type"))
    if t == "session.input_audio.append":
        n = len(str(event.get("audio", ""))) * 3 // 4
        return f"{t} ({pcm_ms(n):.0f} ms)"
    if t.endswith(".append"):
        return f"{t} ({len(str(event.get('content', '')))} characters)"
    return t


# ------------------------------------------------------------------------- server events


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """``session.started``: the session runs; ``expires_at`` is epoch seconds or None."""

    session_id: str
    expires_at: float | None
    model: str | None
    client_event_id: str | None


@dataclass(frozen=True, slots=True)
class InputMuted:
    """``session.input_audio.muted`` (``muted``) or ``…unmuted``: the server's mic state."""

    muted: bool
    client_event_id: str | None


@dataclass(frozen=True, slots=True)
class OutputAudio:
    """``session.output_audio.delta``: decoded PCM16 of the session's one output track."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    """``session.input_transcript.delta`` (``user``) or ``.output_…`` (``assistant``).

    ``delta`` is raw text (it may hold half a surrogate pair); the times are the
    session timeline's.
    """

    role: Literal["user", "assistant"]
    event_id: str
    delta: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class DelegationCreated:
    """``session.delegation.created``: the model handed work off; no task text."""

    delegation_id: str
    target: str
    offset_ms: int
    response_id: str | None


@dataclass(frozen=True, slots=True)
class ContextAppended:
    """``session.{commentary,thinking,instructions}.appended``: placed on the timeline."""

    kind: str
    start_ms: int
    end_ms: int
    client_event_id: str | None


@dataclass(frozen=True, slots=True)
class UsageUpdated:
    """``session.usage.updated``: cumulative billed seconds (a snapshot, never summed)."""

    seconds: float | None
    usage_ratio: float | None


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """``session.closed``: the session is over; ``seconds`` is its final usage."""

    reason: str
    seconds: float | None
    client_event_id: str | None


@dataclass(frozen=True, slots=True)
class ServerError:
    """``error``; ``client_event_id`` names the client event it answers, if any."""

    type: str
    code: str | None
    message: str
    param: str | None
    client_event_id: str | None


@dataclass(frozen=True, slots=True)
class Info:
    """``info``: a notice, logged."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Unhandled:
    """Any other event type (``session.updated``, ``response.event``, …), kept raw."""

    type: str
    raw: dict[str, Any]


ServerEvent = (SessionStarted | InputMuted | OutputAudio | TranscriptDelta | DelegationCreated
               | ContextAppended | UsageUpdated | SessionClosed | ServerError | Info
               | Unhandled)


def _ms(d: dict[str, Any], key: str) -> int:
    v = req_int(d, key)
    if not 0 <= v <= MAX_TIMELINE_MS:
        raise MalformedEvent(f"{d.get('type')}: {key} {v} is not a timeline position")
    return v


def _interval(d: dict[str, Any]) -> tuple[int, int]:
    start, end = _ms(d, "start_ms"), _ms(d, "end_ms")
    if end < start:
        raise MalformedEvent(f"{d.get('type')}: end_ms {end} before start_ms {start}")
    return start, end


def _word(d: dict[str, Any], key: str, limit: int = 64) -> str:
    """A short token (a reason, a target), cut to ``limit`` (logged through printable)."""
    return req_str(d, key)[:limit]


def _seconds(value: object) -> float | None:
    """A usage figure, or None when it is not a plausible number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and 0 <= seconds <= MAX_USAGE_S else None


def _usage(d: dict[str, Any]) -> float | None:
    usage = d.get("usage")
    return _seconds(usage.get("seconds")) if isinstance(usage, dict) else None


def _started(d: dict[str, Any]) -> SessionStarted:
    s = req_obj(d, "session")
    model = s.get("model")
    return SessionStarted(session_id=req_id(s, "id"),
                          expires_at=expiry(s.get("expires_at"), "session.started"),
                          model=guard.printable(model, 100) if isinstance(model, str) else None,
                          client_event_id=opt_id(d, "client_event_id"))


def _transcript(role: Literal["user", "assistant"]) -> Any:
    def parse(d: dict[str, Any]) -> TranscriptDelta:
        start, end = _interval(d)
        return TranscriptDelta(role=role, event_id=req_id(d, "event_id"), delta=req_str(d, "delta"),
                               start_ms=start, end_ms=end)
    return parse


def _delegation(d: dict[str, Any]) -> DelegationCreated:
    dg = req_obj(d, "delegation")
    return DelegationCreated(delegation_id=req_id(dg, "id"), target=_word(dg, "target"),
                             offset_ms=_ms(d, "offset_ms"),
                             response_id=opt_id(dg, "response_id"))


def _appended(kind: str) -> Any:
    def parse(d: dict[str, Any]) -> ContextAppended:
        start, end = _interval(d)
        return ContextAppended(kind=kind, start_ms=start, end_ms=end,
                               client_event_id=opt_id(d, "client_event_id"))
    return parse


def _usage_updated(d: dict[str, Any]) -> UsageUpdated:
    window = d.get("context_window")
    ratio = _seconds(window.get("usage_ratio")) if isinstance(window, dict) else None
    return UsageUpdated(seconds=_usage(d), usage_ratio=ratio)


def _closed(d: dict[str, Any]) -> SessionClosed:
    # a bad usage figure must not cost the close itself: the session is over either way
    return SessionClosed(reason=_word(d, "reason", 40), seconds=_usage(d),
                         client_event_id=opt_id(d, "client_event_id"))


def _error(d: dict[str, Any]) -> ServerError:
    e = req_obj(d, "error")
    kind = e.get("type")
    return ServerError(type=kind[:64] if isinstance(kind, str) and kind else "unknown",
                       code=opt_id(e, "code"), message=error_message(e.get("message")),
                       param=opt_id(e, "param"),
                       client_event_id=opt_id(e, "client_event_id")
                       or opt_id(d, "client_event_id"))


_PARSERS: Final[dict[str, Any]] = {
    "session.started": _started,
    "session.input_audio.muted": lambda d: InputMuted(True, opt_id(d, "client_event_id")),
    "session.input_audio.unmuted": lambda d: InputMuted(False, opt_id(d, "client_event_id")),
    "session.output_audio.delta": lambda d: OutputAudio(pcm=req_pcm(d)),
    "session.input_transcript.delta": _transcript("user"),
    "session.output_transcript.delta": _transcript("assistant"),
    "session.delegation.created": _delegation,
    "session.commentary.appended": _appended("commentary"),
    "session.thinking.appended": _appended("thinking"),
    "session.instructions.appended": _appended("instructions"),
    "session.usage.updated": _usage_updated,
    "session.closed": _closed,
    "error": _error,
    "info": lambda d: Info(code=_word(d, "code", 100), message=error_message(d.get("message"))),
}
# a transcript delta's text keeps its surrogate halves: the core joins deltas first
_RAW_DELTA_TYPES: Final = frozenset({"session.input_transcript.delta",
                                     "session.output_transcript.delta"})


def parse_server_event(frame: str | bytes) -> ServerEvent:
    """Parse one GPT-Live server text frame.

    Returns:
        A typed event, or :class:`Unhandled` for a type the device does not act on.

    Raises:
        MalformedEvent: binary data, not JSON, not an object, no string ``type``, too
            deep, or a known type whose fields are missing, of the wrong type or out of
            bounds. Nothing else.
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


__all__ = ["MAX_APPEND_CHARS", "MAX_TIMELINE_MS", "ClientEvent", "ContextAppended",
           "DelegationCreated", "Info", "InputMuted", "MalformedEvent", "OutputAudio",
           "ServerError", "ServerEvent", "SessionClosed", "SessionStarted",
           "TranscriptDelta", "Unhandled", "UsageUpdated", "audio_append", "context_append",
           "describe", "encode", "history_item", "mute", "parse_server_event",
           "session_close", "session_start"]
