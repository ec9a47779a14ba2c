"""The core behind a relay (issue 20, R1-R4): conversations the relay names, a session the
relay configures, the answer to the device's own session.update, the session's model.

Driven synchronously, as tests/test_session.py; hostile relays included (an announcement
twice, too long, with control characters, after the transcripts, never).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.test_session import (
    EXPIRES,
    FMT,
    assistant,
    audio_done,
    done,
    draft,
    error,
    fx,
    heard,
    new_ids,
    policy,
    server,
    show,
    speaking,
    user,
)
from voiced import guard, wire
from voiced.core.conversation import Conversation
from voiced.core.effects import (
    Draft,
    OpenStandby,
    Reconnect,
    Record,
    Send,
    State,
    SwitchToStandby,
)
from voiced.core.filing import MAX_HELD
from voiced.core.policy import session_update

RELAY = {"send_model": False, "behind_relay": True}


def relay(conversation_id: str | None = None, **overrides: Any) -> Conversation:
    """A core behind a relay, devices open, connected, session.created not yet here."""
    c = Conversation(policy(**{**RELAY, **overrides}), conversation_id=conversation_id,
                     new_id=new_ids())
    c.on_devices_ready()
    c.on_connection_up()
    c.take_effects()
    return c


def ready(c: Conversation, model: str | None = None) -> Conversation:
    """Set up behind a relay: session.created, the relay's and ours session.updated, fence."""
    server(c, wire.SessionCreated("s", EXPIRES, model))
    server(c, wire.SessionUpdated(session={}))
    assert server(c, wire.BufferCleared()) == [show(State.READY)]
    return c


def records(effects: list[Any]) -> list[tuple[str, str, str]]:
    return [(type(e).__name__, e.transcript.text, e.transcript.conversation_id)
            for e in effects if isinstance(e, Record | Draft)]


# ------------------------------------------------------------------ R1: naming


def test_no_id_is_sent_and_the_announced_one_is_adopted() -> None:
    c = ready(relay())
    assert c.conversation_id is None and c.status()["conversation_id"] is None
    assert server(c, wire.RelayConversationCreated("conv-relay")) == []
    assert c.conversation_id == "conv-relay" == c.status()["conversation_id"]
    assert server(c, heard("hello")) == [user("hello", conversation_id="conv-relay")]


def test_transcripts_before_the_announcement_are_held_then_filed_under_it() -> None:
    # the seed announces only after the first response.done: the user's words, the
    # assistant's draft and record may all come first
    c = ready(relay())
    assert server(c, heard("hello")) == []
    speaking(c)
    server(c, audio_done())
    assert records(server(c, wire.AudioTranscriptDone("resp_1", "item_a", 0, "Hi."))) == []
    c.on_playback_drained(1.0)
    assert records(fx(c)) == []
    assert c.filing.held == 2  # the user's record and the assistant's (its draft replaced)
    server(c, done())
    assert server(c, wire.RelayConversationCreated("conv-relay")) == [
        user("hello", conversation_id="conv-relay"),
        assistant("Hi.", heard_ms=500, conversation_id="conv-relay")]
    assert c.filing.held == 0


def test_a_draft_held_is_filed_when_the_record_has_not_come() -> None:
    c = ready(relay())
    speaking(c)
    server(c, wire.AudioTranscriptDone("resp_1", "item_a", 0, "Hi."))
    assert fx(c) == []
    assert server(c, wire.RelayConversationCreated("c9")) == [
        draft("Hi.", conversation_id="c9")]


def test_announced_twice_the_same_changes_nothing_another_is_adopted_for_what_follows(
        caplog: pytest.LogCaptureFixture) -> None:
    guard.reset_for_tests()  # the warning is rate-limited across tests
    c = ready(relay())
    server(c, heard("one", item="u1"))
    assert server(c, wire.RelayConversationCreated("c-a")) == [
        user("one", item="u1", conversation_id="c-a")]
    assert server(c, wire.RelayConversationCreated("c-a")) == []
    caplog.set_level(logging.WARNING, logger="voiced.core")
    assert server(c, wire.RelayConversationCreated("c-b")) == []  # nothing re-filed
    assert "the relay names conversation c-b, not c-a" in caplog.text
    assert c.conversation_id == "c-b"
    assert server(c, heard("two", item="u2")) == [user("two", item="u2",
                                                       conversation_id="c-b")]


@pytest.mark.parametrize("bad", ["conv\n1", "conv\x00", "\u202econv", "a b", "", "-x",
                                 "c" * 129, "caf\u00e9"])
def test_an_id_with_control_characters_or_too_long_is_refused(
        bad: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="voiced.core")
    guard.reset_for_tests()
    c = ready(relay())
    server(c, heard("hello"))
    assert server(c, wire.RelayConversationCreated(bad)) == []
    assert c.conversation_id is None and c.filing.held == 1  # still waiting, nothing lost
    assert "refusing the relay's conversation id" in caplog.text
    assert "\n" not in caplog.messages[-1] and "\x00" not in caplog.text
    assert server(c, wire.RelayConversationCreated("good-1")) == [
        user("hello", conversation_id="good-1")]


def test_an_over_long_id_is_refused_by_the_parser() -> None:
    with pytest.raises(wire.MalformedEvent):
        wire.parse_server_event(json.dumps({"type": "conversation_created",
                                            "conversation_id": "c" * 300}))
    with pytest.raises(wire.MalformedEvent):
        wire.parse_server_event(json.dumps({"type": "conversation_created",
                                            "conversation_id": 7}))


def test_a_long_press_reconnects_without_an_id_and_files_an_unnamed_one_locally() -> None:
    c = ready(relay("conv-cfg"))  # a configured id names the first conversation only
    assert c.conversation_id == "conv-cfg"
    c.on_long_press(1.0)
    assert Reconnect("new conversation") in fx(c)
    assert c.conversation_id is None  # the relay makes the next one: none invented
    c.on_connection_down("reconnecting")
    c.on_connection_up()
    ready(c)
    server(c, heard("second"))
    c.on_long_press(2.0)  # ends unnamed: its words go under the device's own id
    assert records(fx(c)) == [("Record", "second", "conv-2")]
    assert c.conversation_id is None


def test_an_item_of_the_old_conversation_is_filed_under_its_id_after_a_long_press() -> None:
    c = ready(relay())
    server(c, wire.RelayConversationCreated("old"))
    speaking(c)
    server(c, wire.AudioTranscriptDone("resp_1", "item_a", 0, "Bye."))
    fx(c)
    c.on_long_press(1.0)
    c.on_playback_stopped(1.0, {"item_a": 2400})  # heard after the long press
    assert records(fx(c)) == [("Record", "Bye.", "old")]
    assert c.conversation_id is None


def test_without_a_relay_a_long_press_invents_the_next_id() -> None:
    c = Conversation(policy(), conversation_id="conv-1", new_id=new_ids())
    c.on_long_press(1.0)
    assert c.conversation_id == "conv-2"


def test_a_relay_that_never_names_it_gets_a_local_id_past_the_bound_then_its_own(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="voiced.core")
    c = ready(relay())
    for i in range(MAX_HELD):
        assert server(c, heard(f"w{i}", item=f"u{i}")) == []
    effects = server(c, heard("one more", item="u-last"))
    assert {cid for _, _, cid in records(effects)} == {"conv-2"}
    assert len(records(effects)) == MAX_HELD + 1
    assert "filed under the device's own id conv-2 (never sent to the relay)" in caplog.text
    assert c.conversation_id is None  # the local id is not sent on a reconnect
    assert records(server(c, heard("later", item="u-later"))) == [
        ("Record", "later", "conv-2")]
    server(c, wire.RelayConversationCreated("finally"))
    assert records(server(c, heard("named", item="u-n"))) == [
        ("Record", "named", "finally")]


def test_stopping_files_what_is_held() -> None:
    c = ready(relay())
    server(c, heard("hello"))
    c.on_stopping()
    assert records(fx(c)) == [("Record", "hello", "conv-2")]
    c.on_stopping()
    assert fx(c) == []


def test_an_announcement_on_the_standby_is_adopted() -> None:
    c = ready(relay(rollover_margin_s=300))
    server(c, heard("hi"))
    c.on_tick(0.0, EXPIRES - 299)
    assert fx(c) == [OpenStandby()]
    c.on_standby_up()
    c.on_standby_event(wire.RelayConversationCreated("from-standby"), 0.0)
    assert records(fx(c)) == [("Record", "hi", "from-standby")]


# ------------------------------------------------------------------ R2: who configures


def test_a_relay_owned_session_update_carries_only_what_the_device_needs() -> None:
    p = policy(**RELAY, session_owner="relay")
    event = session_update(p, "e1")
    assert event["session"] == {"type": "realtime", "output_modalities": ["audio"],
                                "audio": {"input": {"format": FMT},
                                          "output": {"format": FMT}}}
    # push to talk and client_vad end turns on the device: a server VAD must not
    for kw in ({"push_to_talk": True}, {"turn_type": "client_vad"}, {"turn_type": "none"}):
        s = session_update(policy(**RELAY, session_owner="relay", **kw), "e2")["session"]
        assert s["audio"]["input"] == {"format": FMT, "turn_detection": None}
        assert "instructions" not in s and "tools" not in s


def test_a_device_owned_session_update_behind_a_relay_carries_everything_but_the_model(
        ) -> None:
    tool: wire.FunctionToolParam = {"type": "function", "name": "get_time",
                                    "description": "time", "parameters": {}}
    s = session_update(policy(**RELAY, session_owner="device", tools=(tool,)), "e")["session"]
    assert s["instructions"] == "Be brief." and s["tools"] == [tool]
    assert s["audio"]["input"]["transcription"]["model"] == "gpt-4o-mini-transcribe"
    assert s["audio"]["output"]["voice"] == "marin" and "model" not in s


# ------------------------------------------------------------------ R3: our answer


def test_behind_a_relay_only_the_fence_completes_the_set_up() -> None:
    c = relay()
    effects = server(c, wire.SessionCreated("s", EXPIRES))
    assert [e.event["type"] for e in effects if isinstance(e, Send)] == [
        "session.update", "input_audio_buffer.clear"]
    # the relay's own session.updated, however late it comes, is not our answer
    assert server(c, wire.SessionUpdated(session={"instructions": "relay's"})) == []
    assert c.state is State.CONNECTING and c.awaiting_relay
    c.on_press(0.0)
    c.on_audio_captured(b"\x01\x00" * 480, 0.0)
    assert [e for e in fx(c) if isinstance(e, Send)] == []  # held back: not configured
    assert server(c, wire.SessionUpdated(session={"audio": {"output": {"format": FMT}}})) \
        == []
    effects = server(c, wire.BufferCleared())
    assert show(State.LISTENING) in effects
    assert [e.event["type"] for e in effects if isinstance(e, Send)] == [
        "input_audio_buffer.append"]  # the held audio goes now
    assert not c.awaiting_relay


def test_the_fence_is_sent_with_the_event_ids_that_name_it() -> None:
    c = relay()
    c.on_server_event(wire.SessionCreated("s", EXPIRES), 0.0)
    update, clear = (e for e in c.take_effects() if isinstance(e, Send))
    assert update.event["event_id"] != clear.event["event_id"]
    # a relay that refuses the clear answers with an error naming it: that ends it too
    c.on_server_event(wire.SessionUpdated(session={}), 0.0)
    c.on_server_event(error("relay_event_not_allowed", event_id=clear.event["event_id"]),
                      0.0)
    assert c.state is State.READY


def test_behind_a_relay_a_session_updated_before_session_created_does_not_configure(
        ) -> None:
    c = relay()
    assert server(c, wire.SessionUpdated(session={})) == []
    assert server(c, wire.BufferCleared()) == []  # a clear that is not our fence
    assert c.state is State.CONNECTING


def test_a_clear_answered_after_the_set_up_changes_nothing() -> None:
    c = ready(relay())
    assert server(c, wire.BufferCleared()) == []
    assert c.state is State.READY


def test_without_a_relay_the_first_session_updated_answers_and_no_fence_is_sent() -> None:
    c = Conversation(policy(), conversation_id="conv-1", new_id=new_ids())
    c.on_devices_ready()
    c.on_connection_up()
    c.take_effects()
    effects = server(c, wire.SessionCreated("s", EXPIRES))
    assert [e.event["type"] for e in effects if isinstance(e, Send)] == ["session.update"]
    assert server(c, wire.SessionUpdated(session={})) == [show(State.READY)]


def test_behind_a_relay_the_standby_waits_for_its_fence_too() -> None:
    c = ready(relay(rollover_margin_s=300))
    c.on_tick(0.0, EXPIRES - 299)
    fx(c)
    c.on_standby_up()
    c.on_standby_event(wire.SessionCreated("s2", EXPIRES + 3600), 0.0)
    assert [(e.event["type"], e.standby) for e in fx(c) if isinstance(e, Send)] == [
        ("session.update", True), ("input_audio_buffer.clear", True)]
    c.on_standby_event(wire.SessionUpdated(session={}), 0.0)
    assert c.standby == "configuring" and fx(c) == []
    c.on_standby_event(wire.BufferCleared(), 0.0)
    assert fx(c)[0] == SwitchToStandby()  # ready, and a quiet moment: switched at once


# ------------------------------------------------------------------ R4: the model


def test_records_carry_the_model_the_session_reports() -> None:
    c = ready(relay("c1"), model="relay-model")
    assert server(c, heard("hi", item="u1"))[0].transcript.metadata["model"] == "relay-model"
    server(c, wire.SessionUpdated(session={}, model="newer-model"))
    speaking(c)
    server(c, audio_done())
    server(c, wire.AudioTranscriptDone("resp_1", "item_a", 0, "Hello."))
    c.on_playback_drained(1.0)
    (rec,) = [e for e in c.take_effects() if isinstance(e, Record)]
    assert rec.transcript.metadata["model"] == "newer-model"
    c2 = ready(relay("c1"))  # a session that names no model: the configured one
    assert server(c2, heard("x"))[0].transcript.metadata["model"] == "gpt-realtime"


def test_an_assistant_item_keeps_the_model_of_the_session_that_made_it() -> None:
    c = ready(relay("c1"), model="first")
    speaking(c)
    server(c, audio_done())
    server(c, wire.AudioTranscriptDone("resp_1", "item_a", 0, "Hi."))
    server(c, done())
    c.on_connection_down("gone")
    c.on_connection_up()
    server(c, wire.SessionCreated("s2", EXPIRES, "second"))
    c.on_playback_drained(2.0)
    (rec,) = [e for e in c.take_effects() if isinstance(e, Record)]
    assert rec.transcript.metadata["model"] == "first"


@pytest.mark.parametrize("model,expected", [
    ("gpt-realtime-2025-08-28", "gpt-realtime-2025-08-28"), ("ft:gpt-x:org:1", "ft:gpt-x:org:1"),
    ("bad\nmodel", None), ("m" * 101, None), (7, None), ("", None), (None, None)])
def test_the_parser_keeps_only_a_plausible_model(model: object, expected: str | None
                                                  ) -> None:
    for kind in ("session.created", "session.updated"):
        ev = wire.parse_server_event(json.dumps({"type": kind, "session": {
            "id": "s", "model": model}}))
        assert isinstance(ev, wire.SessionCreated | wire.SessionUpdated)
        assert ev.model == expected
