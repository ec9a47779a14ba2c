"""What the GA dialect lets a client send, so the simulator refuses the rest like upstream.

Upstream answers a field it does not know with ``error`` ``unknown_parameter`` and the
field's dotted path as ``param`` (``session.audio.input.turn_detection.silence_ms``),
and changes nothing. The tables below are the GA client types of the ``openai`` package
(3.63), written out so the simulator needs no ``openai`` at run time; a test holds them
to that package's TypedDicts. Where a table stops (a leaf), anything is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from voiced.wire import SAMPLE_RATE


@dataclass(frozen=True)
class ByType:
    """An object whose fields depend on its ``type`` (an unknown type is not checked)."""

    kinds: Mapping[str, Mapping[str, Spec]]


@dataclass(frozen=True)
class Each:
    """A list, each element checked against ``item``."""

    item: Spec


Spec = Union[None, Mapping[str, "Spec"], ByType, Each]  # noqa: UP007 - a runtime alias
"""None: anything; a mapping: an object with these fields; ByType / Each as above."""

_FORMAT = ByType({"audio/pcm": {"type": None, "rate": None}, "audio/pcmu": {"type": None},
                  "audio/pcma": {"type": None}})
_VOICE: Spec = {"id": None}  # or a name
_PROMPT: Spec = {"id": None, "variables": None, "version": None}
_REASONING: Spec = {"effort": None}
_TOOL_CHOICE = ByType({"function": {"type": None, "name": None},
                       "mcp": {"type": None, "server_label": None, "name": None}})
_MCP_TOOL: Mapping[str, Spec] = {
    key: None for key in (
        "type", "server_label", "allowed_callers", "allowed_tools", "authorization",
        "connector_id", "defer_loading", "headers", "require_approval",
        "server_description", "server_url", "tunnel_id")}
_TOOLS = Each(ByType({"function": {"type": None, "name": None, "description": None,
                                   "parameters": None},
                      "mcp": _MCP_TOOL}))

SERVER_VAD: Mapping[str, Spec] = {
    key: None for key in ("type", "threshold", "prefix_padding_ms", "silence_duration_ms",
                          "idle_timeout_ms", "create_response", "interrupt_response")}
SEMANTIC_VAD: Mapping[str, Spec] = {
    key: None for key in ("type", "eagerness", "create_response", "interrupt_response")}

SESSION: Mapping[str, Spec] = {
    "type": None,
    "model": None,
    "instructions": None,
    "output_modalities": None,
    "audio": {
        "input": {
            "format": _FORMAT,
            "noise_reduction": {"type": None, "strength": None},
            "transcription": {key: None for key in (
                "model", "language", "languages", "prompt", "keywords", "delay")},
            "turn_detection": ByType({"server_vad": SERVER_VAD,
                                      "semantic_vad": SEMANTIC_VAD}),
        },
        "output": {"format": _FORMAT, "voice": _VOICE, "speed": None},
    },
    "include": None,
    "max_output_tokens": None,
    "parallel_tool_calls": None,
    "prompt": _PROMPT,
    "reasoning": _REASONING,
    "tool_choice": _TOOL_CHOICE,
    "tools": _TOOLS,
    "tracing": {"group_id": None, "metadata": None, "workflow_name": None},
    "truncation": ByType({"retention_ratio": {"type": None, "retention_ratio": None,
                                              "token_limits": {"post_instructions": None}}}),
}
"""``session.update``'s ``session`` (a realtime session)."""

RESPONSE: Mapping[str, Spec] = {
    "audio": {"output": {"format": _FORMAT, "voice": _VOICE}},
    "conversation": None,
    "input": None,  # conversation items, checked as items are
    "instructions": None,
    "max_output_tokens": None,
    "metadata": None,
    "output_modalities": None,
    "parallel_tool_calls": None,
    "prompt": _PROMPT,
    "reasoning": _REASONING,
    "tool_choice": _TOOL_CHOICE,
    "tools": _TOOLS,
}
"""``response.create``'s ``response``."""

_BASE: Mapping[str, Spec] = {"type": None, "event_id": None}
CLIENT_EVENTS: Mapping[str, Mapping[str, Spec]] = {
    "session.update": {**_BASE, "session": SESSION},
    "input_audio_buffer.append": {**_BASE, "audio": None},
    "input_audio_buffer.commit": _BASE,
    "input_audio_buffer.clear": _BASE,
    "conversation.item.create": {**_BASE, "previous_item_id": None, "item": None},
    "conversation.item.retrieve": {**_BASE, "item_id": None},
    "conversation.item.truncate": {**_BASE, "item_id": None, "content_index": None,
                                   "audio_end_ms": None},
    "conversation.item.delete": {**_BASE, "item_id": None},
    "response.create": {**_BASE, "response": RESPONSE},
    "response.cancel": {**_BASE, "response_id": None},
}
"""Every client event a WebSocket session accepts, with its fields."""


def unknown_field(value: Any, spec: Spec, path: str) -> str | None:
    """The dotted path of the first field of ``value`` that ``spec`` does not know."""
    if isinstance(spec, Each):
        if isinstance(value, list):
            for i, element in enumerate(value):
                if (bad := unknown_field(element, spec.item, f"{path}[{i}]")) is not None:
                    return bad
        return None
    if not isinstance(value, dict) or spec is None:
        return None
    if isinstance(spec, ByType):
        kind = spec.kinds.get(value.get("type"))  # type: ignore[arg-type]
        return None if kind is None else unknown_field(value, kind, path)
    for key, sub in value.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in spec:
            return where
        if (bad := unknown_field(sub, spec[key], where)) is not None:
            return bad
    return None


VAD_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "server_vad": {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200,
                   "idle_timeout_ms": None, "create_response": True,
                   "interrupt_response": True},
    "semantic_vad": {"eagerness": "auto", "create_response": True,
                     "interrupt_response": True},
}
"""What upstream fills in for a turn detection the client gave in part."""

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin",
          "cedar")


def default_session(model: str, session_id: str, expires_at: int) -> dict[str, Any]:
    """A new session's configuration, as ``session.created`` shows it."""
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["audio"], "instructions": "",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                      "transcription": None, "noise_reduction": None,
                      "turn_detection": {"type": "server_vad",
                                         **VAD_DEFAULTS["server_vad"]}},
            "output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                       "voice": "alloy", "speed": 1.0}},
        "tools": [], "tool_choice": "auto", "max_output_tokens": "inf",
        "tracing": None, "truncation": "auto", "prompt": None,
        "expires_at": expires_at, "include": None,
    }
