"""The parts of the configuration the conversation depends on, and the session they ask for."""

from __future__ import annotations

from dataclasses import dataclass

from voiced import wire
from voiced.core.speech_gate import ClientVad


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of the configuration the conversation logic depends on."""

    model: str
    voice: str
    instructions: str
    turn_detection: wire.TurnDetectionParam | None
    """None: push to talk / manual turns (the client commits and asks for a response)."""
    transcription: wire.TranscriptionParam
    half_duplex: bool = True
    """Mute the mic while the speaker plays, and for ``echo_tail_ms`` after."""
    echo_tail_ms: int = 300
    send_model: bool = True
    """False behind a relay, which chooses the model itself."""
    reseed_turns: int = 10
    """Earlier turns given to a new session of the same conversation as context."""
    rollover_margin_s: float = 300.0
    """Move to a new session this long before the current one expires (at a quiet
    moment; forced in the last fifth of the margin)."""
    tools: tuple[wire.FunctionToolParam, ...] = ()
    """Functions the model may call (declared in session.update)."""
    client_vad: ClientVad | None = None
    """On-device turn detection: send only speech, commit and ask for replies ourselves."""
    max_transcript_bytes: int = 65_536
    """UTF-8 bytes of one transcript kept (deltas and finals; an hour of speech is less)."""
    max_pending_items: int = 64
    """Assistant items held at once; the oldest is closed (and recorded) beyond this."""


def make_policy(*, model: str, voice: str, instructions: str, turn_type: str,
                threshold: float, prefix_padding_ms: int, silence_duration_ms: int,
                eagerness: str, transcription: wire.TranscriptionParam,
                half_duplex: bool, echo_tail_ms: int, push_to_talk: bool,
                send_model: bool, reseed_turns: int = 10,
                rollover_margin_s: float = 300.0,
                tools: tuple[wire.FunctionToolParam, ...] = (),
                client_vad: ClientVad | None = None, max_transcript_bytes: int = 65_536,
                max_pending_items: int = 64) -> Policy:
    """Build a :class:`Policy` from plain values (the supervisor maps settings here)."""
    td: wire.TurnDetectionParam | None
    if push_to_talk or turn_type != "client_vad":
        client_vad = None
    if push_to_talk or turn_type in ("none", "client_vad"):
        td = None  # the client ends turns itself
    elif turn_type == "server_vad":
        td = {"type": "server_vad", "threshold": threshold,
              "prefix_padding_ms": prefix_padding_ms,
              "silence_duration_ms": silence_duration_ms,
              "create_response": True, "interrupt_response": True}
    else:
        td = {"type": "semantic_vad", "eagerness": eagerness,
              "create_response": True, "interrupt_response": True}
    return Policy(model=model, voice=voice, instructions=instructions, turn_detection=td,
                  transcription=transcription, half_duplex=half_duplex,
                  echo_tail_ms=echo_tail_ms, send_model=send_model,
                  reseed_turns=reseed_turns, rollover_margin_s=rollover_margin_s,
                  tools=tools, client_vad=client_vad,
                  max_transcript_bytes=max_transcript_bytes,
                  max_pending_items=max_pending_items)


def session_update(p: Policy, event_id: str) -> wire.SessionUpdateParam:
    """The ``session.update`` that configures a session (the live one or a standby)."""
    fmt: wire.AudioFormatParam = {"type": "audio/pcm", "rate": wire.SAMPLE_RATE}
    session: wire.SessionParam = {
        "type": "realtime",
        "instructions": p.instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": fmt, "transcription": p.transcription,
                      "turn_detection": p.turn_detection},
            "output": {"format": fmt, "voice": p.voice},
        },
    }
    if p.send_model:
        session["model"] = p.model
    if p.tools:
        session["tools"] = list(p.tools)
        session["tool_choice"] = "auto"
    return {"type": "session.update", "event_id": event_id, "session": session}
