"""What ``session.start`` and ``session.update`` may hold, and the session resource.

The simulator's Live endpoint (:mod:`voiced.sim.live`) refuses what the service refuses,
with its codes and the dotted path as ``param``, and resolves the defaults the resource
carries in ``session.started``.
"""

from __future__ import annotations

from typing import Any

from voiced.sim import live_fields
from voiced.sim.responses import ClientMistake, new_id
from voiced.wire import SAMPLE_RATE


def resource(ev: dict[str, Any], expires_at: float) -> dict[str, Any]:
    """The session ``session.start`` asks for, checked, with its defaults resolved."""
    s = ev.get("session")
    if not isinstance(s, dict):
        raise ClientMistake.missing("session")
    model = s.get("model")
    if not isinstance(model, str) or not model:
        raise ClientMistake.missing("session.model")
    audio = s.get("audio") or {}
    fmt = audio.get("format")
    if fmt is not None and fmt != {"type": "audio/pcm", "rate": SAMPLE_RATE}:
        raise ClientMistake("invalid_value", "voiced sim serves audio/pcm at 24000 Hz only "
                            "(the service also takes 16 kHz PCM and G.711).",
                            "session.audio.format")
    voice_name = (audio.get("output") or {}).get("voice", "marin")
    if not (isinstance(voice_name, dict) and isinstance(voice_name.get("id"), str)
            or voice_name in live_fields.VOICES):
        raise ClientMistake("invalid_value", f"Invalid value: '{voice_name}'.",
                            "session.audio.output.voice")
    if "client" in s:
        raise ClientMistake("invalid_value", "Client capabilities apply to WebRTC "
                            "sessions, not a WebSocket.", "session.client")
    if s.get("triggers"):
        raise ClientMistake("invalid_value", "voiced sim does not simulate Decisions "
                            "triggers.", "session.triggers")
    delegation = s.get("delegation") or {"type": "client"}
    check_delegation(delegation, "session.delegation")
    history = s.get("input") or []
    check_history(history)
    session = {
        "id": new_id("live"), "expires_at": int(expires_at),
        "model": model, "status": "active", "instructions": s.get("instructions") or "",
        "audio": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                  "output": {"voice": voice_name}},
        "delegation": delegation, "input": history,
    }
    for key in ("store", "safety_identifier"):
        if key in s:
            session[key] = s[key]
    return session


def check_delegation(delegation: Any, param: str) -> None:
    """A ``session.delegation``: client or Responses (Decisions is not simulated)."""
    kind = delegation.get("type") if isinstance(delegation, dict) else None
    if kind == "decisions":
        raise ClientMistake("invalid_value", "voiced sim does not simulate Decisions "
                            "delegation.", f"{param}.type")
    if kind not in ("client", "responses"):
        raise ClientMistake("invalid_value", f"Invalid value: '{kind}'.", f"{param}.type")
    delay = delegation.get("acknowledgement_delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise ClientMistake("invalid_value", "Invalid 'acknowledgement_delay_ms'.",
                            f"{param}.acknowledgement_delay_ms")
    if kind == "responses" and not isinstance(
            (delegation.get("responses") or {}).get("model"), str):
        raise ClientMistake.missing(f"{param}.responses.model")


def updated_delegation(current: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """The delegation after a ``session.update``'s ``session`` ``s`` (its type is fixed)."""
    if s.get("triggers"):
        raise ClientMistake("invalid_value", "voiced sim does not simulate Decisions "
                            "triggers.", "session.triggers")
    if "delegation" in s:
        new = s["delegation"]
        if not isinstance(new, dict) or new.get("type") != current["type"]:
            raise ClientMistake("immutable_field_update", "The delegation type cannot "
                                "change after the session started.",
                                "session.delegation.type")
        merged = {**current, **{k: v for k, v in new.items() if k != "responses"}}
        if isinstance(new.get("responses"), dict):
            merged["responses"] = {**(current.get("responses") or {}),
                                   **new["responses"]}
        check_delegation(merged, "session.delegation")
        return merged
    return current


def check_history(history: Any) -> None:
    """Text-only startup history: at most 128 messages, one text part each."""
    if not isinstance(history, list) or len(history) > 128:
        raise ClientMistake("invalid_value", "session.input holds at most 128 messages.",
                            "session.input")
    parts = {"developer": ("input_text",), "user": ("input_text",),
             "assistant": ("output_text", "text")}
    for i, item in enumerate(history):
        role = item.get("role") if isinstance(item, dict) else None
        content = item.get("content") if isinstance(item, dict) else None
        if role not in parts or not isinstance(content, list) or len(content) != 1 or not (
                isinstance(content[0], dict) and isinstance(content[0].get("text"), str)
                and content[0].get("type", parts[role][0]) in parts[role]):
            raise ClientMistake("invalid_value", "Each history message is a developer, user "
                                "or assistant message with exactly one text part.",
                                f"session.input[{i}]")
