"""The parts of the configuration the conversation depends on, and the session they ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from voiced import wire
from voiced.core.speech_gate import ClientVad

SessionOwner = Literal["device", "relay"]


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
    behind_relay: bool = False
    """A relay is in front of the Realtime API: it names new conversations (the device
    sends none and adopts the one announced), and it may update the session itself, so
    the device fences its own session.update (core/setup.py)."""
    session_owner: SessionOwner = "device"
    """Who sets instructions, tools and transcription: the device (its session.update
    carries them) or the relay (the device sends only what it needs: audio formats and,
    when it ends turns itself, turn_detection null)."""
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
                send_model: bool, behind_relay: bool = False,
                session_owner: SessionOwner = "device", reseed_turns: int = 10,
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
                  behind_relay=behind_relay, session_owner=session_owner,
                  reseed_turns=reseed_turns, rollover_margin_s=rollover_margin_s,
                  tools=tools, client_vad=client_vad,
                  max_transcript_bytes=max_transcript_bytes,
                  max_pending_items=max_pending_items)


def session_update(p: Policy, event_id: str) -> wire.SessionUpdateParam:
    """The ``session.update`` that configures a session (the live one or a standby)."""
    fmt: wire.AudioFormatParam = {"type": "audio/pcm", "rate": wire.SAMPLE_RATE}
    if p.session_owner == "relay":
        return {"type": "session.update", "event_id": event_id,
                "session": _device_part(p, fmt)}
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


def _device_part(p: Policy, fmt: wire.AudioFormatParam) -> wire.SessionParam:
    """What the device must set in a session the relay configures.

    Its audio path is PCM16 24 kHz both ways and it plays audio, so the formats and the
    output modality. Turn detection only when the device ends turns itself (push to talk,
    client_vad, none): it commits and asks for replies, and a server VAD would answer
    twice. Instructions, tools, transcription, the voice (the URL's ``?voice=`` carries
    the device's choice) and server VAD settings are the relay's.
    """
    audio_in: wire.AudioInputParam = {"format": fmt}
    if p.turn_detection is None:
        audio_in["turn_detection"] = None
    return {"type": "realtime", "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": {"format": fmt}}}
