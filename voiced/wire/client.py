"""Client events we send: ``TypedDict`` params built by small functions."""

from __future__ import annotations

import base64
import json
from typing import Any, Literal, NotRequired, TypedDict

from voiced.wire.frames import (
    pcm_ms,
    valid_text,
)


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
    transcription: NotRequired[TranscriptionParam]
    turn_detection: NotRequired[TurnDetectionParam | None]


class AudioOutputParam(TypedDict):
    """GA ``audio.output``."""

    format: AudioFormatParam
    voice: NotRequired[str]


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
    instructions: NotRequired[str]
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
