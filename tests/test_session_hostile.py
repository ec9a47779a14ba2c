"""The conversation core against hostile server event sequences (issue 17).

Unit tests for each finding the core owns, then property-based fuzzing: random
sequences of server events and local inputs never raise, and the item, byte and
response bounds hold after every step.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_session import (
    assistant,
    configured,
    created,
    delta,
    done,
    error,
    fresh,
    fx,
    heard,
    pcm,
    said,
    samples,
    server,
    show,
    speaking,
    truncate,
    words,
)
from voiced import wire
from voiced.core.conversation import Conversation
from voiced.core.effects import (
    CallTool,
    Draft,
    OpenStandby,
    Play,
    Reconnect,
    Record,
    Send,
    State,
    StopPlayback,
)

EMOJI = "\U0001F600"


def records(effects: list[Any]) -> list[Record]:
    return [e for e in effects if isinstance(e, Record)]


def sends(effects: list[Any], type_: str) -> list[dict[str, Any]]:
    return [dict(e.event) for e in effects if isinstance(e, Send) and e.event["type"] == type_]


# ------------------------------------------------------------------ finding 3: text


def test_an_emoji_split_across_deltas_is_joined_and_reseeds_cleanly() -> None:
    c = configured()
    speaking(c, samples(100))
    server(c, words("\ud83d"))
    server(c, words("\ude00 hi"))
    c.on_connection_down("connection lost")
    c.take_effects()
    c.on_playback_drained(1.0)
    (record,) = records(c.take_effects())
    assert record.transcript.text == f"{EMOJI} hi"
    c.on_connection_up()
    c.on_server_event(wire.SessionCreated("s2", None), 2.0)
    effects = c.take_effects()
    (item,) = sends(effects, "conversation.item.create")
    assert item["item"]["content"][0]["text"] == f"{EMOJI} hi"
    for e in effects:
        if isinstance(e, Send):
            wire.encode(e.event).encode("utf-8")  # raised UnicodeEncodeError before


def test_a_lone_surrogate_never_reaches_a_record_or_the_history() -> None:
    c = configured()
    speaking(c, samples(100))
    server(c, words("half \ud83d"))
    server(c, done())
    c.on_playback_drained(1.0)
    (record,) = records(c.take_effects())
    assert record.transcript.text == "half \ufffd"
    c.take_effects()
    server(c, heard("user \udc00"))  # a wire event built without the parser's repair
    assert all("\ud800" > ch or ch > "\udfff" for _, text in c.history.turns for ch in text)


# ------------------------------------------------------------------ finding 6: bounds


def test_transcript_deltas_are_capped_in_bytes_not_count() -> None:
    """150 deltas of 1 MB held 191 MB: the cap was 10,000 deltas."""
    c = configured(max_transcript_bytes=65_536)
    speaking(c, samples(100))
    chunk = "\u00e9" * (1 << 19)  # 1 MiB of UTF-8
    for _ in range(150):
        server(c, words(chunk))
    assert c.transcript_bytes() <= 65_536
    c.on_connection_down("gone")
    c.on_playback_drained(1.0)
    (record,) = records(c.take_effects())
    assert 65_000 <= len(record.transcript.text.encode()) <= 65_536
    assert c.counters.transcripts_cut >= 1


def test_tiny_deltas_are_compacted() -> None:
    c = configured()
    speaking(c, samples(100))
    for _ in range(10_000):
        server(c, words("a"))
    assert len(c.replies.items["item_a"].partial) <= 65
    assert c.transcript_bytes() == 10_000


def test_a_whole_transcript_is_capped_too() -> None:
    c = configured(max_transcript_bytes=2048)
    c.on_server_event(heard("y" * 1_000_000), 0.0)
    (record,) = records(c.take_effects())
    assert record.transcript.text == "y" * 2048
    speaking(c, samples(100))
    server(c, said("\u00e9" * 1_000_001))
    server(c, done())
    c.on_playback_drained(1.0)
    (record,) = records(c.take_effects())
    assert record.transcript.text == "\u00e9" * 1024  # cut between characters, not inside


def test_items_that_never_finish_are_bounded_and_recorded_when_pruned() -> None:
    """5,000 phantom items meant 5,000 items in memory and 5,000 draft files."""
    c = configured(max_pending_items=16)
    drafted: set[str] = set()
    recorded: set[str] = set()
    for i in range(1000):
        c.on_server_event(said(f"phantom {i}", item=f"it_{i}", resp=f"r_{i}"), 0.0)
        for e in c.take_effects():
            if isinstance(e, Draft):
                drafted.add(e.transcript.item_id)
            elif isinstance(e, Record):
                recorded.add(e.transcript.item_id)
        assert c.status()["pending_items"] <= 16
        assert len(drafted - recorded) <= 16  # drafts waiting for their record
    c.on_connection_down("gone")
    recorded |= {e.transcript.item_id for e in records(c.take_effects())}
    assert drafted == recorded == {f"it_{i}" for i in range(1000)}
    assert c.status()["pending_items"] == 0


def test_a_long_press_leaves_no_item_of_the_old_conversation() -> None:
    c = configured()
    server(c, words("never finished", item="it_x", resp="r_x"))
    c.on_long_press(0.0)
    assert Reconnect("new conversation") in c.take_effects()
    c.on_connection_down("reconnect requested")  # what the supervisor does next
    (record,) = records(c.take_effects())
    assert record.transcript.text == "never finished"
    assert record.transcript.conversation_id == "conv-1"
    assert c.status()["pending_items"] == 0


def test_an_item_silent_for_a_minute_is_closed() -> None:
    c = configured()
    speaking(c, samples(100))
    c.on_playback_drained(1.0)  # an underrun: no audio.done, no response.done ever
    fx(c)
    assert c.state is State.SPEAKING
    c.on_tick(30.0, 1000.0)
    assert c.state is State.SPEAKING
    c.on_tick(61.0, 1031.0)
    assert c.state is State.READY
    assert c.status()["pending_items"] == 0


def test_a_reply_whose_response_created_was_lost_ends_with_its_session() -> None:
    """Low: the state stayed `speaking` across reconnects."""
    c = configured()
    assert server(c, delta(samples(200), resp="resp_lost")) == [
        Play(pcm(samples(200)), "item_a"), show(State.SPEAKING)]
    c.on_connection_down("connection lost")
    c.take_effects()
    c.on_playback_drained(1.0)
    assert c.state is State.CONNECTING
    c.on_connection_up()
    server(c, wire.SessionCreated("s2", None))
    c.take_effects()
    assert server(c, wire.SessionUpdated({})) == [show(State.READY)]


def test_a_reply_past_the_playback_bound_is_cancelled_and_truncated_when_played() -> None:
    c = configured()
    speaking(c, samples(500))
    c.on_playback_full("item_a", samples(200), 1.0)  # the sink took 300 ms of 500
    effects = fx(c)
    assert sends(effects, "response.cancel") == [
        {"type": "response.cancel", "response_id": "resp_1"}]
    assert server(c, delta(samples(100))) == []  # the rest of the reply is dropped
    assert c.state is State.SPEAKING  # what was queued plays out
    c.on_playback_drained(2.0)
    assert fx(c) == [truncate("item_a", 300), show(State.READY)]
    assert server(c, said("A long story.")) == [
        assistant("A long story.", heard_ms=300, interrupted=True)]
    assert c.counters.playback_overflows == 1


def test_too_many_tool_calls_at_once_are_answered_not_run() -> None:
    c = configured()
    server(c, created())
    started = []
    for i in range(40):
        c.on_server_event(wire.FunctionCallDone("resp_1", f"i{i}", f"c{i}", "get_time",
                                                "{}"), 0.0)
        started += [e for e in c.take_effects() if isinstance(e, CallTool)]
    assert len(started) == 16
    assert len(c.calls.calls) == 16


# ------------------------------------------------------------------ finding 13, low items


def test_an_expiry_long_past_by_the_wall_clock_starts_no_rollover() -> None:
    c = fresh()
    c.on_devices_ready()
    c.on_tick(0.0, 1_767_225_600.0)
    c.on_connection_up()
    server(c, wire.SessionCreated("s", 1000.0))
    server(c, wire.SessionUpdated({}))
    assert c.expires_at is None
    c.on_tick(1.0, 1_767_225_601.0)
    assert not [e for e in c.take_effects() if isinstance(e, OpenStandby)]


def test_server_text_reaches_logs_as_one_capped_line(caplog: pytest.LogCaptureFixture) -> None:
    c = configured()
    server(c, error("bad\ncode", message="line one\nline two " + "x" * 50_000,
                    param="p\nq"))
    server(c, heard("hello\nWARNING forged"))
    for rec in caplog.records:
        assert "\n" not in rec.getMessage() and len(rec.getMessage()) < 2000


# ------------------------------------------------------------------ fuzzing


_ID = st.sampled_from(["item_a", "item_b", "item_c", "it\ud83d"]) | st.text(max_size=4)
_RESP = st.sampled_from(["resp_1", "resp_2", "resp_3"]) | st.text(max_size=3)
_TEXT = st.text(max_size=30) | st.sampled_from(["\ud83d", "\ude00", "x" * 5000])
_SERVER_EVENTS = st.one_of(
    st.builds(wire.SessionCreated, st.none() | _ID,
              st.none() | st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(wire.SessionUpdated, st.just({})),
    st.builds(wire.SpeechStarted, st.integers(0, 10_000), _ID),
    st.builds(wire.SpeechStopped, st.integers(0, 10_000), _ID),
    st.builds(wire.BufferCommitted, _ID),
    st.builds(wire.InputTranscriptionCompleted, _ID, st.just(0), _TEXT),
    st.builds(wire.InputTranscriptionFailed, _ID, _TEXT),
    st.builds(wire.ResponseCreated, _RESP),
    st.builds(wire.ResponseDone, _RESP, st.sampled_from(["completed", "cancelled"]),
              st.none(), st.dictionaries(_ID, _TEXT, max_size=2)),
    st.builds(wire.AudioDelta, _RESP, _ID, st.just(0),
              st.integers(0, 4800).map(lambda n: b"\x01\x00" * n)),
    st.builds(wire.AudioDone, _RESP, _ID),
    st.builds(wire.AudioTranscriptDone, _RESP, _ID, st.just(0), _TEXT),
    st.builds(wire.AudioTranscriptDelta, _RESP, _ID, _TEXT),
    st.builds(wire.ItemTruncated, _ID, st.integers(0, 5000)),
    st.builds(wire.FunctionCallDone, _RESP, _ID, _ID, st.sampled_from(["get_time", "x"]),
              _TEXT, st.booleans()),
    st.builds(wire.ServerError, st.just("invalid_request_error"), st.none() | st.sampled_from(
        ["invalid_api_key", "session_expired", "response_cancel_not_active", "other"]),
        _TEXT, st.none(), st.none() | st.just("voiced_1")),
    st.builds(wire.RelayConversationCreated, _ID),
    st.builds(wire.Unhandled, st.text(max_size=10), st.just({})),
)
_INPUTS = st.one_of(
    _SERVER_EVENTS.map(lambda ev: ("server", ev)),
    st.sampled_from(["press", "long_press", "interrupt", "drained", "up", "down", "tick",
                     "stopped", "mic", "talk_start", "talk_end"]).map(lambda k: (k, None)),
    st.tuples(st.just("full"), st.tuples(_ID, st.integers(0, 10_000))),
    st.tuples(st.just("tool"), _ID),
)

MAX_ITEMS = 8
MAX_BYTES = 2048


def _step(c: Conversation, kind: str, arg: Any, now: float) -> None:
    match kind:
        case "server":
            c.on_server_event(arg, now)
        case "press":
            c.on_press(now)
        case "long_press":
            c.on_long_press(now)
        case "interrupt":
            c.on_interrupt(now)
        case "drained":
            c.on_playback_drained(now)
        case "up":
            c.on_connection_up()
        case "down":
            c.on_connection_down("gone")
        case "tick":
            c.on_tick(now, 1_767_225_600.0 + now)
        case "stopped":
            c.on_playback_stopped(now, {})
        case "mic":
            c.on_audio_captured(b"\x00\x00" * 480, now)
        case "talk_start":
            c.on_talk_start(now)
        case "talk_end":
            c.on_talk_end(now)
        case "full":
            c.on_playback_full(arg[0], arg[1], now)
        case "tool":
            c.on_tool_result(arg, '{"ok": true}', now)


def _check(c: Conversation, effects: list[Any]) -> None:
    assert len(c.replies.items) <= MAX_ITEMS
    assert all(it.partial_bytes <= MAX_BYTES for it in c.replies.items.values())
    assert c.transcript_bytes() <= MAX_ITEMS * MAX_BYTES
    assert len(c.replies.discarded) <= 256 and len(c.replies.finished) <= 256
    assert sum(call.output is None for call in c.calls.calls.values()) <= 16
    assert isinstance(c.state, State)
    json.dumps(c.status())
    for e in effects:
        if isinstance(e, Send):
            wire.encode(e.event).encode("utf-8")
        elif isinstance(e, Record | Draft):
            e.transcript.text.encode("utf-8")
            assert len(e.transcript.text.encode()) <= MAX_BYTES
        elif isinstance(e, StopPlayback):
            c.on_playback_stopped(0.0, {})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_INPUTS, max_size=60), st.booleans())
def test_fuzz_random_event_sequences_keep_the_core_whole_and_bounded(
        inputs: list[tuple[str, Any]], manual: bool) -> None:
    c = fresh(turn_type="none" if manual else "server_vad", max_pending_items=MAX_ITEMS,
              max_transcript_bytes=MAX_BYTES)
    c.on_devices_ready()
    c.on_connection_up()
    for i, (kind, arg) in enumerate(inputs):
        _step(c, kind, arg, float(i))
        _check(c, c.take_effects())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_ID, _RESP, _TEXT), min_size=1, max_size=200))
def test_fuzz_phantom_items_never_exceed_the_bound(items: list[tuple[str, str, str]]) -> None:
    c = configured(max_pending_items=MAX_ITEMS, max_transcript_bytes=MAX_BYTES)
    for item, resp, text in items:
        c.on_server_event(wire.AudioTranscriptDelta(resp, item, text), 0.0)
        c.on_server_event(wire.AudioDelta(resp, item, 0, b"\x01\x00" * 10), 0.0)
        _check(c, c.take_effects())
