"""Wire types: every client event voiced can send is valid GA; server parsing is tolerant."""

from __future__ import annotations

import base64
import json
import typing
from typing import Annotated, Any, Union, get_args

import pytest
from openai.types.realtime import RealtimeClientEvent
from pydantic import Field, TypeAdapter

from voiced import wire
from voiced.session import Conversation, Send, make_policy

_CLIENT_MEMBERS = get_args(get_args(RealtimeClientEvent)[0])
GA_CLIENT: TypeAdapter[Any] = TypeAdapter(
    Annotated[Union[_CLIENT_MEMBERS], Field(discriminator="type")])  # noqa: UP007


def sendable_types() -> set[str]:
    """The ``type`` literal of every member of wire.ClientEvent."""
    out = set()
    for td in get_args(wire.ClientEvent):
        hints = typing.get_type_hints(td)
        out.add(get_args(hints["type"])[0])
    return out


def all_sends() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    tool: wire.FunctionToolParam = {
        "type": "function", "name": "get_time", "description": "the time",
        "parameters": {"type": "object", "properties": {}}}
    for policy in ({}, {"turn_type": "none"}, {"turn_type": "semantic_vad"},
                   {"send_model": False}, {"push_to_talk": True}, {"tools": (tool,)}):
        out += sends_for(policy)
    return out


def sends_for(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """Drive one conversation through every path that sends something."""
    c_sends: list[dict[str, Any]] = []
    args: dict[str, Any] = dict(
        model="gpt-realtime-2.1", voice="marin", instructions="Be brief.",
        turn_type="server_vad", threshold=0.5, prefix_padding_ms=300,
        silence_duration_ms=500, eagerness="auto",
        transcription={"model": "gpt-4o-mini-transcribe", "language": "de"},
        half_duplex=False, echo_tail_ms=0, push_to_talk=False, send_model=True)
    args.update(policy)
    c = Conversation(make_policy(**args), conversation_id="c1", new_id=lambda: "c2")
    steps = [
        lambda: c.on_devices_ready(), lambda: c.on_connection_up(),
        lambda: c.on_server_event(wire.SessionCreated("s", 1.0), 0),
        lambda: c.on_server_event(wire.SessionUpdated({}), 0),
        lambda: c.on_press(0),
        lambda: c.on_audio_captured(b"\1\0" * 4800, 0),
        lambda: c.on_server_event(wire.SpeechStarted(0, "u1"), 0),
        lambda: c.on_press(0), lambda: c.on_press(0),
        lambda: c.on_audio_captured(b"\1\0" * 100, 0),
        lambda: c.on_press(0),  # too short: clear in manual mode
        lambda: c.on_server_event(wire.ResponseCreated("r1"), 0),
        lambda: c.on_server_event(wire.AudioDelta("r1", "a1", 0, b"\0\0" * 2400), 0),
        lambda: c.on_press(0),
        lambda: c.on_playback_stopped(0, {"a1": 1200}),
        lambda: c.on_server_event(wire.InputTranscriptionCompleted("u1", 0, "Hallo, wie spät?"), 0),
        lambda: c.on_server_event(wire.AudioTranscriptDone("r1", "a1", 0, "Es ist zwölf."), 0),
        lambda: c.on_connection_down("server closed 1006"),
        lambda: c.on_connection_up(),
        lambda: c.on_server_event(wire.SessionCreated("s2", 2.0), 0),  # re-seeded
        lambda: c.on_server_event(wire.SessionUpdated({}), 0),
        lambda: c.on_server_event(wire.ResponseCreated("r2"), 0),
        lambda: c.on_server_event(wire.FunctionCallDone("r2", "f1", "call_1", "get_time",
                                                        "{}"), 0),
        lambda: c.on_tool_result("call_1", '{"time": "12:00"}', 0),
        lambda: c.on_server_event(wire.ResponseDone("r2", "completed", None, {}), 0),
    ]
    for step in steps:
        step()
        c_sends += [e.event for e in c.take_effects() if isinstance(e, Send)]
    return c_sends


def test_every_sendable_client_event_type_is_produced_and_valid_ga() -> None:
    sends = all_sends()
    produced = {e["type"] for e in sends}
    assert produced == sendable_types()
    for event in sends:
        assert isinstance(event["event_id"], str) and event["event_id"]
        GA_CLIENT.validate_python(json.loads(wire.encode(event)))  # raises if not GA


def test_session_update_variants_are_ga() -> None:
    updates = [e for e in all_sends() if e["type"] == "session.update"]
    assert len(updates) == 12  # six policies, each configuring two sessions
    tds = [u["session"]["audio"]["input"]["turn_detection"] for u in updates]
    assert {td["type"] if td else None for td in tds} == {"server_vad", "semantic_vad", None}
    assert any("model" not in u["session"] for u in updates)  # behind a relay
    assert any(u["session"].get("tools") for u in updates)
    for u in updates:
        assert "OpenAI-Beta" not in json.dumps(u)
        assert u["session"]["audio"]["output"]["format"] == {"type": "audio/pcm",
                                                             "rate": 24000}


def test_describe_never_contains_audio() -> None:
    ev = wire.audio_append("e1", b"\x01\x02" * 480)
    text = wire.describe(ev)
    assert ev["audio"] not in text and "20 ms" in text


def frame(**d: Any) -> str:
    return json.dumps(d)


@pytest.mark.parametrize("raw", [
    b"\x00\x01",
    "not json",
    "[1, 2]",
    frame(no_type=1),
    frame(type=7),
    frame(type="session.created"),
    frame(type="session.created", session={"expires_at": "soon"}),
    frame(type="response.output_audio.delta", response_id="r", item_id="i", delta="%%%"),
    frame(type="response.output_audio.delta", response_id="r", item_id="i",
          delta=base64.b64encode(b"abc").decode()),
    frame(type="response.output_audio.delta", response_id="r", item_id=3, delta=""),
    frame(type="input_audio_buffer.speech_started", item_id="i", audio_start_ms="0"),
    frame(type="input_audio_buffer.speech_started", item_id="i", audio_start_ms=True),
    frame(type="response.done", response={"id": "r", "output": "nope"}),
    frame(type="response.created"),
    frame(type="error", error=5),
    frame(type="error", error={"code": 5}),
    frame(type="conversation.item.input_audio_transcription.completed", item_id="i"),
], ids=lambda r: str(r)[:60])
def test_malformed_frames_raise_malformed_event(raw: str | bytes) -> None:
    with pytest.raises(wire.MalformedEvent):
        wire.parse_server_event(raw)


def test_unknown_types_are_unhandled_not_errors() -> None:
    ev = wire.parse_server_event(frame(type="rate_limits.updated", rate_limits=[]))
    assert isinstance(ev, wire.Unhandled) and ev.type == "rate_limits.updated"


def test_legacy_audio_names_are_accepted() -> None:
    pcm = b"\x01\x00" * 10
    ev = wire.parse_server_event(frame(type="response.audio.delta", response_id="r",
                                       item_id="i", delta=base64.b64encode(pcm).decode()))
    assert isinstance(ev, wire.AudioDelta) and ev.pcm == pcm and ev.content_index == 0


def test_relay_error_shapes() -> None:
    ev = wire.parse_server_event(frame(type="error", error="Connection to voice service failed"))
    assert isinstance(ev, wire.ServerError) and "voice service" in ev.message
    ev = wire.parse_server_event(frame(type="error", msg="openAI connection not ready"))
    assert isinstance(ev, wire.ServerError) and ev.type == "relay_error"
    ev = wire.parse_server_event(frame(type="conversation_created", conversation_id="c9"))
    assert ev == wire.RelayConversationCreated("c9")


def test_response_done_collects_transcripts() -> None:
    ev = wire.parse_server_event(frame(type="response.done", response={
        "id": "r1", "status": "cancelled",
        "status_details": {"type": "cancelled", "reason": "turn_detected"},
        "output": [{"id": "i1", "content": [{"type": "output_audio", "transcript": "hi"}]},
                   {"id": "i2", "content": [{"type": "output_text"}]}, "junk"]}))
    assert ev == wire.ResponseDone("r1", "cancelled", "turn_detected", {"i1": "hi"})


def test_error_event_fields() -> None:
    ev = wire.parse_server_event(frame(type="error", error={
        "type": "invalid_request_error", "code": "invalid_value", "message": "bad",
        "param": "type", "event_id": "voiced_3"}))
    assert ev == wire.ServerError("invalid_request_error", "invalid_value", "bad", "type",
                                  "voiced_3")


def test_function_calls_parse_from_both_events_that_report_them() -> None:
    args = frame(type="response.function_call_arguments.done", response_id="r",
                 item_id="i", output_index=0, call_id="c", name="get_time",
                 arguments='{"tz": "Europe/Berlin"}')
    item = frame(type="response.output_item.done", response_id="r", output_index=0,
                 item={"id": "i", "type": "function_call", "call_id": "c",
                       "name": "get_time", "arguments": '{"tz": "Europe/Berlin"}'})
    expected = wire.FunctionCallDone("r", "i", "c", "get_time", '{"tz": "Europe/Berlin"}')
    assert wire.parse_server_event(args) == expected
    assert wire.parse_server_event(item) == expected
    message = frame(type="response.output_item.done", response_id="r", output_index=0,
                    item={"id": "i", "type": "message", "role": "assistant"})
    assert isinstance(wire.parse_server_event(message), wire.Unhandled)
    with pytest.raises(wire.MalformedEvent):
        wire.parse_server_event(frame(type="response.function_call_arguments.done",
                                      response_id="r", item_id="i", name="x", arguments=""))
    assert wire.describe(wire.function_output_item("e", "c", "{}")) == (
        "conversation.item.create (function_call_output)")
