"""Wire types: every client event voiced can send is valid GA; server parsing is tolerant."""

from __future__ import annotations

import base64
import dataclasses
import json
import typing
from typing import Annotated, Any, Union, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeClientEvent
from pydantic import Field, TypeAdapter

from voiced import wire
from voiced.core.conversation import Conversation
from voiced.core.effects import Send
from voiced.core.policy import make_policy

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
    frame(type="response.created", response={"id": "r" * 257}),
    "[" * 100_000,
    '{"type": "x", "a": ' + "[" * 70 + "]" * 70 + "}",
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


# ------------------------------------------------------------------ hostile frames (issue 17)


@pytest.mark.parametrize("depth", [900, 1000, 5000, 100_000])
def test_deep_nesting_is_malformed_not_a_recursion_error(depth: int) -> None:
    """Finding 2: ``"[" * 1000`` raised RecursionError out of the parser."""
    with pytest.raises(wire.MalformedEvent):
        wire.parse_server_event("[" * depth)  # unterminated too
    for raw in ["[" * depth + "]" * depth,
                '{"type": "x", "a": ' + "[" * depth + "]" * depth + "}",
                '{"type": "error", "error": ' + '{"a": ' * depth + "1" + "}" * depth + "}"]:
        with pytest.raises(wire.MalformedEvent, match="nested"):
            wire.parse_server_event(raw)


def test_nesting_within_the_limit_parses() -> None:
    depth = wire.MAX_DEPTH - 2
    ev = wire.parse_server_event('{"type": "x", "a": ' + "[" * depth + "]" * depth + "}")
    assert isinstance(ev, wire.Unhandled)


@pytest.mark.parametrize("raw, expected", [
    ("Infinity", None), ("-Infinity", None), ("NaN", None), ("1e300", None), ("-5", None),
    ("0", None), ('"soon"', None), ("true", None), ("[1]", None), ("1" * 400, None),
    ("1767225600", 1767225600.0), ("1767225600.5", 1767225600.5)])
def test_odd_expiry_times_parse_to_none(raw: str, expected: float | None) -> None:
    """Finding 13: expires_at is a time or None; a bad one never drops session.created."""
    ev = wire.parse_server_event(
        '{"type": "session.created", "session": {"id": "s", "expires_at": ' + raw + "}}")
    assert ev == wire.SessionCreated("s", expected)


def test_lone_surrogates_are_replaced_and_pairs_joined() -> None:
    """Finding 3: a lone surrogate cannot be encoded; a joined pair is one character."""
    ev = wire.parse_server_event(
        '{"type": "conversation.item.input_audio_transcription.completed", "item_id": '
        '"\\udc00i", "transcript": "a\\ud83d b \\ud83d\\ude00 c\\udfff"}')
    assert ev == wire.InputTranscriptionCompleted("\ufffdi", 0, "a\ufffd b \U0001F600 c\ufffd")
    err = wire.parse_server_event('{"type": "error", "error": {"message": "x\\ud800"}}')
    assert isinstance(err, wire.ServerError) and err.message == "x\ufffd"
    unknown = wire.parse_server_event('{"type": "x", "\\ud800": ["\\udc00"]}')
    assert isinstance(unknown, wire.Unhandled) and unknown.raw["\ufffd"] == ["\ufffd"]
    json.dumps(unknown.raw, ensure_ascii=False).encode()  # encodable now


def test_a_transcript_delta_keeps_its_surrogate_half_for_the_core_to_join() -> None:
    ev = wire.parse_server_event(
        '{"type": "response.output_audio_transcript.delta", "response_id": "r", '
        '"item_id": "i", "delta": "\\ud83d"}')
    assert ev == wire.AudioTranscriptDelta("r", "i", "\ud83d")
    assert wire.valid_text("\ud83d" + "\ude00!") == "\U0001F600!"
    assert wire.valid_text("\ud83d") == "\ufffd"


def test_encode_never_produces_text_that_cannot_be_sent() -> None:
    event = wire.text_item("e1", "assistant", "half \ud83d")
    wire.encode(event).encode("utf-8")
    assert "half \ufffd" in wire.encode(event)


def test_ids_and_messages_are_bounded() -> None:
    with pytest.raises(wire.MalformedEvent, match="characters long"):
        wire.parse_server_event(frame(type="response.output_audio.delta", response_id="r",
                                      item_id="i" * 10_000, delta=""))
    ev = wire.parse_server_event(frame(type="error", error={"message": "m" * 100_000}))
    assert isinstance(ev, wire.ServerError) and len(ev.message) == wire.MAX_MESSAGE_CHARS
    with pytest.raises(wire.MalformedEvent):
        wire.parse_server_event(frame(type="conversation_created", conversation_id="c" * 300))


# ------------------------------------------------------------------ fuzzing


_ids = st.text(max_size=8) | st.sampled_from(["item_a", "resp_1", "call_1"])
_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
            | st.sampled_from(["\ud83d", "\ude00", "AAAA", "%%%"]))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
_events = st.fixed_dictionaries(
    {"type": st.sampled_from([*wire.server._PARSERS, "x.unknown"])},
    optional={k: _json | _ids for k in (
        "item_id", "response_id", "call_id", "name", "arguments", "delta", "transcript",
        "content_index", "audio_start_ms", "audio_end_ms", "conversation_id", "error",
        "message", "msg")} | {"session": st.dictionaries(
            st.sampled_from(["id", "expires_at", "audio"]), _json, max_size=3),
        "response": st.dictionaries(st.sampled_from(
            ["id", "status", "status_details", "output"]), _json, max_size=4),
        "item": st.dictionaries(st.sampled_from(
            ["id", "type", "call_id", "name", "arguments", "status"]), _json | _ids,
            max_size=6)})


def _parse_or_malformed(raw: str | bytes) -> None:
    try:
        ev = wire.parse_server_event(raw)
    except wire.MalformedEvent:
        return
    # whatever comes out is valid text all the way down (a record or a re-seed can hold it)
    if not isinstance(ev, wire.AudioTranscriptDelta):
        json.dumps(dataclasses.asdict(ev), ensure_ascii=False, default=repr).encode()


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_events)
def test_fuzz_event_shaped_frames_only_ever_raise_malformed_event(event: dict[str, Any]) -> None:
    _parse_or_malformed(json.dumps(event))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=50)
       | st.builds(lambda d, s: s * d, st.integers(1, 3000), st.sampled_from(
           ["[", "{", '{"a":', '[{"type":"error","error":', "\\ud800"])))
def test_fuzz_arbitrary_frames_only_ever_raise_malformed_event(raw: str | bytes) -> None:
    _parse_or_malformed(raw)
