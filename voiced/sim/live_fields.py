"""What the GPT-Live dialect lets a client send, so the simulator refuses the rest.

The service answers a field it does not know with ``error`` ``unknown_parameter`` and its
dotted path as ``param`` (``session.audio.output.speed``). These tables are the Live
client types of the ``openai`` package (3.63, ``openai.types.live``), written out so the
simulator needs no ``openai`` at run time; a test holds them to that package's
TypedDicts. Where a table stops (a leaf, or a part the simulator does not look into,
such as the Responses backend's hosted tools), anything is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping

from voiced.sim.fields import ByType, Each, Spec

_FORMAT = ByType({kind: {"type": None, "rate": None}
                  for kind in ("audio/pcm", "audio/pcmu", "audio/pcma")})
_RESPONSES_COMMON: Mapping[str, Spec] = {
    "instructions": None, "max_output_tokens": None, "model": None,
    "parallel_tool_calls": None, "reasoning": {"effort": None, "summary": None},
    "service_tier": None, "text": {"verbosity": None}, "tool_choice": None,
    # function tools are checked; hosted ones (web_search, mcp, ...) run server-side
    "tools": Each(ByType({"function": {"type": None, "name": None, "description": None,
                                       "parameters": None, "strict": None}})),
}
_DELEGATION = ByType({
    "client": {"type": None, "acknowledgement_delay_ms": None},
    "responses": {"type": None, "acknowledgement_delay_ms": None,
                  "responses": _RESPONSES_COMMON},
    "decisions": {"type": None, "acknowledgement_delay_ms": None, "decisions": None},
})
INITIAL_ITEM: Mapping[str, Spec] = {
    "role": None, "content": Each({"type": None, "text": None}), "id": None, "status": None,
    "type": None}
"""One startup history message (developer, user and assistant have the same fields)."""

SESSION: Mapping[str, Spec] = {
    "model": None,
    "instructions": None,
    "audio": {"format": _FORMAT, "output": {"voice": {"id": None}}},
    "client": None,  # WebRTC data-channel permissions: refused below on a WebSocket
    "delegation": _DELEGATION,
    "input": Each(INITIAL_ITEM),
    "safety_identifier": None,
    "store": None,
    "triggers": None,
}
"""``session.start``'s ``session``."""

SESSION_UPDATE: Mapping[str, Spec] = {"delegation": _DELEGATION, "triggers": None}
"""``session.update``'s ``session``: only delegation settings and Decisions triggers."""

_APPEND: Mapping[str, Spec] = {"type": None, "event_id": None, "content": None,
                               "delegation_id": None}
_BASE: Mapping[str, Spec] = {"type": None, "event_id": None}
CLIENT_EVENTS: Mapping[str, Mapping[str, Spec]] = {
    "session.start": {**_BASE, "session": SESSION},
    "session.update": {**_BASE, "session": SESSION_UPDATE},
    "session.input_audio.append": {**_BASE, "audio": None},
    "session.input_audio.mute": _BASE,
    "session.input_audio.unmute": _BASE,
    "session.output_audio.fixture.play": {**_BASE, "audio": None},
    "session.instructions.append": _APPEND,
    "session.thinking.append": _APPEND,
    "session.commentary.append": _APPEND,
    "decision.create": _BASE,
    "decision.item.create": {**_BASE, "item": None},
    "decision.item.delete": {**_BASE, "item_id": None},
    "response.item.create": {**_BASE, "item": None},
    "response.create": _BASE,
    "session.close": _BASE,
}
"""Every client event a primary Live WebSocket accepts, with its fields."""

VOICES = ("alloy", "ash", "ballad", "beacon", "bossa", "cedar", "cinder", "coral", "delta",
          "echo", "gleam", "marin", "meridian", "quartz", "ripple", "sage", "shida",
          "shimmer", "stone", "tempo", "verse", "vesper", "willow")
"""The SDK's built-in voice names (the docs list more locale voices: open question Q8)."""
