"""GPT-Live wire types: what the device sends is valid Live; server parsing is hostile-safe."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.live_types import strict_client_event, strict_server_event
from voiced.live import wire as lw
from voiced.wire import MAX_DEPTH, MalformedEvent


def frame(**d: Any) -> str:
    return json.dumps(d)


def all_builders() -> list[lw.ClientEvent]:
    history = [lw.history_item("user", "Set a timer for tea"),
               lw.history_item("assistant", "Done, four minutes.")]
    return [
        lw.session_start("s1", model="gpt-live-1.1", instructions="Be brief.", voice="marin",
                         ack_delay_ms=600, history=history, safety_identifier="kitchen"),
        lw.session_start("s2", model="gpt-live-1", instructions="", voice="cedar",
                         ack_delay_ms=0, history=[]),
        lw.audio_append(b"\1\0" * 480),
        lw.mute("m1", True), lw.mute("m2", False),
        lw.context_append("c1", "commentary", "It is noon.", "item_1"),
        lw.context_append("c2", "thinking", "The user stopped playback.", None),
        lw.context_append("c3", "instructions", "Speak German from now on.", None),
        lw.session_close("x1"),
    ]


def test_every_client_event_the_device_builds_is_valid_live() -> None:
    sent = all_builders()
    assert {e["type"] for e in sent} == {
        "session.start", "session.input_audio.append", "session.input_audio.mute",
        "session.input_audio.unmute", "session.commentary.append", "session.thinking.append",
        "session.instructions.append", "session.close"}
    for event in sent:
        strict_client_event(lw.encode(event))  # raises if not a Live client event


def test_session_start_has_the_appliance_settings() -> None:
    start = all_builders()[0]
    assert start["type"] == "session.start"
    session = start["session"]
    assert session["audio"] == {"format": {"type": "audio/pcm", "rate": 24000},
                                "output": {"voice": "marin"}}
    assert session["delegation"] == {"type": "client", "acknowledgement_delay_ms": 600}
    assert session["input"][1] == {"role": "assistant", "content": [
        {"type": "output_text", "text": "Done, four minutes."}]}
    assert "input" not in all_builders()[1]["session"]  # no history: no input


def test_appends_are_capped_and_descriptions_hold_no_content() -> None:
    long = lw.context_append("c", "commentary", "x" * 10_000, "d")
    assert len(long["content"]) == lw.MAX_APPEND_CHARS and long["content"].endswith("…")
    append = lw.audio_append(b"\1\2" * 480)
    assert lw.describe(append) == "session.input_audio.append (20 ms)"
    assert "secret" not in lw.describe(lw.context_append("c", "thinking", "secret", None))


# ------------------------------------------------------------------ server events

EXCHANGE = [  # the protocol notes' minimal exchange (§9), and the delegation fixture (§6)
    {"type": "session.started", "event_id": "event_A", "client_event_id": "s1",
     "session": {"id": "live_1", "expires_at": 1791373550, "model": "gpt-live-1",
                 "status": "active", "instructions": "…",
                 "audio": {"output": {"voice": "marin"},
                           "format": {"type": "audio/pcm", "rate": 24000}},
                 "delegation": {"type": "client"}, "input": []}},
    {"type": "session.output_audio.delta", "delta": base64.b64encode(bytes(4800)).decode()},
    {"type": "session.input_transcript.delta", "event_id": "event_B", "start_ms": 600,
     "end_ms": 800, "delta": "What"},
    {"type": "session.output_transcript.delta", "event_id": "event_C", "start_ms": 2400,
     "end_ms": 2600, "delta": "It's"},
    {"type": "session.delegation.created", "event_id": "event_G", "offset_ms": 4600,
     "delegation": {"id": "item_EWIV", "type": "delegation", "target": "client"}},
    {"type": "session.commentary.appended", "event_id": "event_H", "start_ms": 5400,
     "end_ms": 5600, "client_event_id": "c7"},
    {"type": "session.input_audio.muted", "event_id": "event_I", "client_event_id": "m1"},
    {"type": "session.input_audio.unmuted", "event_id": "event_J"},
    {"type": "session.usage.updated", "event_id": "event_D", "usage": {"seconds": 15},
     "context_window": {"usage_ratio": 0.01}},
    {"type": "error", "event_id": "event_F", "error": {
        "type": "invalid_request_error", "code": "invalid_value", "param": "content",
        "message": "Context append text must not exceed 500 tokens.",
        "client_event_id": "c8"}},
    {"type": "info", "event_id": "event_K", "code": "data_channel_permissions",
     "message": "m"},
    {"type": "session.closed", "event_id": "event_E", "client_event_id": "c1",
     "reason": "close_requested", "usage": {"seconds": 21},
     "session": {"id": "live_1", "expires_at": 1791373550, "model": "gpt-live-1",
                 "status": "active"}},
    {"type": "session.updated", "event_id": "event_L", "session": {
        "id": "live_1", "expires_at": 1791373550, "model": "gpt-live-1", "status": "active"}},
]


def test_the_documented_exchange_parses_to_typed_events() -> None:
    for event in EXCHANGE:
        strict_server_event(event)  # the shapes themselves are valid Live
    parsed = [lw.parse_server_event(json.dumps(e)) for e in EXCHANGE]
    assert parsed[:-1] == [
        lw.SessionStarted("live_1", 1791373550.0, "gpt-live-1", "s1"),
        lw.OutputAudio(bytes(4800)),
        lw.TranscriptDelta("user", "event_B", "What", 600, 800),
        lw.TranscriptDelta("assistant", "event_C", "It's", 2400, 2600),
        lw.DelegationCreated("item_EWIV", "client", 4600, None),
        lw.ContextAppended("commentary", 5400, 5600, "c7"),
        lw.InputMuted(True, "m1"), lw.InputMuted(False, None),
        lw.UsageUpdated(15.0, 0.01),
        lw.ServerError("invalid_request_error", "invalid_value",
                       "Context append text must not exceed 500 tokens.", "content", "c8"),
        lw.Info("data_channel_permissions", "m"),
        lw.SessionClosed("close_requested", 21.0, "c1"),
    ]
    assert isinstance(parsed[-1], lw.Unhandled) and parsed[-1].type == "session.updated"


@pytest.mark.parametrize("raw", [
    b"\x00\x01", "not json", "[1, 2]", frame(no_type=1), frame(type=7),
    "[" * 100_000, '{"type": "x", "a": ' + "[" * 70 + "]" * 70 + "}",
    frame(type="session.started"),
    frame(type="session.started", session={"id": 5}),
    frame(type="session.started", session={"id": "s" * 300}),
    frame(type="session.output_audio.delta", delta="%%%"),
    frame(type="session.output_audio.delta", delta=base64.b64encode(b"abc").decode()),
    frame(type="session.output_audio.delta"),
    frame(type="session.input_transcript.delta", event_id="e", delta="x", start_ms="0",
          end_ms=200),
    frame(type="session.input_transcript.delta", event_id="e", delta="x", start_ms=True,
          end_ms=200),
    frame(type="session.input_transcript.delta", event_id="e", delta="x", start_ms=400,
          end_ms=200),
    frame(type="session.output_transcript.delta", event_id="e", delta="x", start_ms=-200,
          end_ms=0),
    frame(type="session.output_transcript.delta", event_id="e", delta="x", start_ms=0,
          end_ms=10**15),
    frame(type="session.output_transcript.delta", delta="x", start_ms=0, end_ms=200),
    frame(type="session.output_transcript.delta", event_id="e", delta=7, start_ms=0,
          end_ms=200),
    frame(type="session.delegation.created", offset_ms=0, delegation={"target": "client"}),
    frame(type="session.delegation.created", delegation={"id": "d", "target": "client"}),
    frame(type="session.commentary.appended", start_ms=5, end_ms=1),
    frame(type="session.closed", usage={"seconds": 1}),
    frame(type="error", error="text"),
    frame(type="error", error={"code": 5}),
], ids=lambda r: str(r)[:60])
def test_malformed_frames_raise_malformed_event(raw: str | bytes) -> None:
    with pytest.raises(MalformedEvent):
        lw.parse_server_event(raw)


@pytest.mark.parametrize("usage", [{"seconds": "1"}, {"seconds": 1e300}, {"seconds": -3},
                                   {"seconds": float("nan")}, {}, None, 5])
def test_an_odd_usage_figure_is_none_and_never_costs_the_close(usage: Any) -> None:
    closed = lw.parse_server_event(json.dumps({"type": "session.closed", "reason": "expired",
                                               "usage": usage}))
    assert closed == lw.SessionClosed("expired", None, None)
    updated = lw.parse_server_event(json.dumps({"type": "session.usage.updated",
                                                "usage": usage}))
    assert updated == lw.UsageUpdated(None, None)


def test_an_odd_expiry_is_none_and_never_costs_the_start() -> None:
    for raw in ("Infinity", "1e300", "-5", '"soon"', "1" * 400):
        ev = lw.parse_server_event('{"type": "session.started", "session": '
                                   '{"id": "live_1", "expires_at": ' + raw + "}}")
        assert ev == lw.SessionStarted("live_1", None, None, None)


def test_unknown_types_are_unhandled() -> None:
    ev = lw.parse_server_event(frame(type="response.event", event={"type": "x"}))
    assert isinstance(ev, lw.Unhandled) and ev.type == "response.event"


def test_surrogates_are_repaired_except_in_transcript_deltas() -> None:
    ev = lw.parse_server_event('{"type": "session.output_transcript.delta", "event_id": '
                               '"e", "start_ms": 0, "end_ms": 200, "delta": "\\ud83d"}')
    assert ev == lw.TranscriptDelta("assistant", "e", "\ud83d", 0, 200)
    err = lw.parse_server_event('{"type": "error", "error": {"type": "t", "message": '
                                '"x\\ud800", "code": "c\\udc00"}}')
    assert err == lw.ServerError("t", "c\ufffd", "x\ufffd", None, None)
    started = lw.parse_server_event('{"type": "session.started", "session": '
                                    '{"id": "live\\ud800", "model": "m\\udfff"}}')
    assert started == lw.SessionStarted("live\ufffd", None, "m\ufffd", None)


def test_nesting_within_the_limit_parses() -> None:
    depth = MAX_DEPTH - 2
    ev = lw.parse_server_event('{"type": "x", "a": ' + "[" * depth + "]" * depth + "}")
    assert isinstance(ev, lw.Unhandled)


def test_words_from_the_server_are_bounded() -> None:
    ev = lw.parse_server_event(frame(type="session.closed", reason="r\n" * 500))
    assert isinstance(ev, lw.SessionClosed) and len(ev.reason) == 40
    with pytest.raises(MalformedEvent, match="characters long"):
        lw.parse_server_event(frame(type="session.delegation.created", offset_ms=0,
                                    delegation={"id": "d" * 1000, "target": "client"}))


# ------------------------------------------------------------------ fuzzing

_ids = st.text(max_size=8) | st.sampled_from(["item_a", "live_1", "event_1"])
_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
            | st.sampled_from(["\ud83d", "\ude00", "AAAA", "%%%", "client"]))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
_events = st.fixed_dictionaries(
    {"type": st.sampled_from([*lw._PARSERS, "session.updated", "x.unknown"])},
    optional={k: _json | _ids for k in (
        "event_id", "client_event_id", "delta", "start_ms", "end_ms", "offset_ms", "reason",
        "code", "message", "error")} | {
        "session": st.dictionaries(st.sampled_from(["id", "expires_at", "model"]), _json,
                                   max_size=3),
        "usage": st.dictionaries(st.sampled_from(["seconds"]), _json, max_size=1),
        "context_window": st.dictionaries(st.sampled_from(["usage_ratio"]), _json),
        "delegation": st.dictionaries(st.sampled_from(["id", "target", "response_id"]),
                                      _json | _ids, max_size=3)})


def _parse_or_malformed(raw: str | bytes) -> None:
    try:
        ev = lw.parse_server_event(raw)
    except MalformedEvent:
        return
    # whatever comes out is valid text all the way down, transcript deltas aside
    if not isinstance(ev, lw.TranscriptDelta):
        json.dumps(dataclasses.asdict(ev), ensure_ascii=False, default=repr).encode()
    else:
        assert 0 <= ev.start_ms <= ev.end_ms <= lw.MAX_TIMELINE_MS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_events)
def test_fuzz_event_shaped_frames_only_ever_raise_malformed_event(event: dict[str, Any]) -> None:
    _parse_or_malformed(json.dumps(event))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=50)
       | st.builds(lambda d, s: s * d, st.integers(1, 3000), st.sampled_from(
           ["[", "{", '{"a":', '[{"type":"error","error":', "\\ud800"])))
def test_fuzz_arbitrary_frames_only_ever_raise_malformed_event(raw: str | bytes) -> None:
    _parse_or_malformed(raw)
