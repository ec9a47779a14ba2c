"""The sans-I/O conversation core, driven synchronously input by input.

Every test asserts the whole effect list of each step. Sends are compared without their
``event_id`` (``fx`` checks that each has one and strips it); one test checks the ids
themselves.
"""

from __future__ import annotations

import base64
import itertools
import logging
from collections.abc import Callable
from typing import Any

import pytest

from voiced import wire
from voiced.core.conversation import Conversation
from voiced.core.effects import (
    CloseStandby,
    Draft,
    Effect,
    MicOpened,
    OpenStandby,
    Play,
    Reconnect,
    Record,
    Send,
    ShowState,
    State,
    StopPlayback,
    SwitchToStandby,
)
from voiced.core.policy import Policy, make_policy
from voiced.transcripts import Transcript

RATE = wire.SAMPLE_RATE
EXPIRES = 1_767_225_600.0
TRANSCRIPTION: wire.TranscriptionParam = {"model": "gpt-4o-mini-transcribe", "language": "en"}
FMT = {"type": "audio/pcm", "rate": 24000}
SERVER_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
              "silence_duration_ms": 500, "create_response": True,
              "interrupt_response": True}


# ------------------------------------------------------------------------ helpers


def policy(**overrides: Any) -> Policy:
    kw: dict[str, Any] = dict(
        model="gpt-realtime", voice="marin", instructions="Be brief.",
        turn_type="server_vad", threshold=0.5, prefix_padding_ms=300,
        silence_duration_ms=500, eagerness="auto", transcription=TRANSCRIPTION,
        half_duplex=True, echo_tail_ms=300, push_to_talk=False, send_model=True)
    kw.update(overrides)
    return make_policy(**kw)


def new_ids() -> Callable[[], str]:
    counter = itertools.count(2)
    return lambda: f"conv-{next(counter)}"


def fresh(**overrides: Any) -> Conversation:
    return Conversation(policy(**overrides), conversation_id="conv-1", new_id=new_ids())


def plain(effects: list[Effect]) -> list[Effect]:
    """The effects, each Send checked for a string event_id and compared without it."""
    out: list[Effect] = []
    for e in effects:
        if isinstance(e, Send):
            event: dict[str, Any] = dict(e.event)
            eid = event.pop("event_id")
            assert isinstance(eid, str) and eid
            out.append(Send(event, e.standby))  # type: ignore[arg-type]
        else:
            out.append(e)
    return out


def fx(c: Conversation) -> list[Effect]:
    return plain(c.take_effects())


def server(c: Conversation, ev: wire.ServerEvent, now: float = 0.0) -> list[Effect]:
    c.on_server_event(ev, now)
    return fx(c)


def configured(**overrides: Any) -> Conversation:
    """A conversation with devices open and a configured session, effects drained."""
    c = fresh(**overrides)
    c.on_devices_ready()
    c.on_connection_up()
    c.take_effects()
    effects = server(c, wire.SessionCreated(session_id="s", expires_at=EXPIRES))
    assert len(effects) == 2
    first = effects[0]
    assert isinstance(first, Send) and first.event["type"] == "session.update"
    assert effects[1] == ShowState(State.CONNECTING, "configuring session")
    assert server(c, wire.SessionUpdated(session={})) == [show(State.READY)]
    return c


def reconnected(c: Conversation) -> list[Effect]:
    """The connection came back with a new session; returns what session.updated caused."""
    c.on_connection_up()
    server(c, wire.SessionCreated("s2", EXPIRES + 60))
    c.take_effects()
    return server(c, wire.SessionUpdated(session={}))


def samples(ms: int) -> int:
    return RATE * ms // 1000


def pcm(n: int) -> bytes:
    return b"\x01\x00" * n


def delta(n: int = samples(100), item: str = "item_a", resp: str = "resp_1",
          content_index: int = 0) -> wire.AudioDelta:
    return wire.AudioDelta(response_id=resp, item_id=item, content_index=content_index,
                           pcm=pcm(n))


def created(resp: str = "resp_1") -> wire.ResponseCreated:
    return wire.ResponseCreated(response_id=resp)


def audio_done(item: str = "item_a", resp: str = "resp_1") -> wire.AudioDone:
    return wire.AudioDone(response_id=resp, item_id=item)


def said(text: str, item: str = "item_a", resp: str = "resp_1") -> wire.AudioTranscriptDone:
    return wire.AudioTranscriptDone(response_id=resp, item_id=item, content_index=0,
                                    transcript=text)


def done(resp: str = "resp_1", status: str = "completed", reason: str | None = None,
         transcripts: dict[str, str] | None = None) -> wire.ResponseDone:
    return wire.ResponseDone(response_id=resp, status=status, reason=reason,
                             transcripts=transcripts or {})


def error(code: str | None, *, message: str = "went wrong", param: str | None = None,
          event_id: str | None = None, type_: str = "invalid_request_error"
          ) -> wire.ServerError:
    return wire.ServerError(type=type_, code=code, message=message, param=param,
                            event_id=event_id)


def heard(text: str, item: str = "item_u") -> wire.InputTranscriptionCompleted:
    return wire.InputTranscriptionCompleted(item_id=item, content_index=0, transcript=text)


def show(state: State, detail: str | None = None) -> ShowState:
    return ShowState(state, str(state) if detail is None else detail)


def send(type_: str, **fields: Any) -> Send:
    return Send({"type": type_, **fields})  # type: ignore[arg-type]


COMMIT = send("input_audio_buffer.commit")
CLEAR = send("input_audio_buffer.clear")
CREATE = send("response.create")


def cancel(resp: str = "resp_1") -> Send:
    return send("response.cancel", response_id=resp)


def truncate(item: str, end_ms: int, content_index: int = 0) -> Send:
    return send("conversation.item.truncate", item_id=item, content_index=content_index,
                audio_end_ms=end_ms)


def append(data: bytes) -> Send:
    return send("input_audio_buffer.append", audio=base64.b64encode(data).decode("ascii"))


def assistant(text: str, *, item: str = "item_a", resp: str = "resp_1",
              interrupted: bool = False, heard_ms: int, conversation_id: str = "conv-1"
              ) -> Record:
    return Record(Transcript(
        role="assistant", text=text, item_id=item, conversation_id=conversation_id,
        metadata={"voice": "marin", "model": "gpt-realtime", "item_id": item,
                  "response_id": resp, "interrupted": interrupted, "heard_ms": heard_ms}))


def draft(text: str, *, item: str = "item_a", resp: str = "resp_1",
          conversation_id: str = "conv-1") -> Draft:
    """An assistant record kept while its audio still plays: played and cut not known."""
    return Draft(Transcript(
        role="assistant", text=text, item_id=item, conversation_id=conversation_id,
        metadata={"voice": "marin", "model": "gpt-realtime", "item_id": item,
                  "response_id": resp, "interrupted": None, "heard_ms": None}))


def user(text: str, *, item: str = "item_u", conversation_id: str = "conv-1") -> Record:
    return Record(Transcript(
        role="user", text=text, item_id=item, conversation_id=conversation_id,
        metadata={"input_method": "realtime_voice", "model": "gpt-realtime",
                  "item_id": item}))


def speaking(c: Conversation, n: int = samples(500), **kw: Any) -> None:
    """A response is created and its first audio arrives (mic off → thinking → speaking)."""
    assert server(c, created()) == [show(State.THINKING)]
    assert server(c, delta(n, **kw)) == [Play(pcm(n), kw.get("item", "item_a")),
                                         show(State.SPEAKING)]


# ------------------------------------------------------------------------ policies


def test_make_policy_server_vad() -> None:
    p = policy()
    assert p.turn_detection == SERVER_VAD
    assert (p.model, p.voice, p.instructions) == ("gpt-realtime", "marin", "Be brief.")
    assert p.transcription == TRANSCRIPTION
    assert (p.half_duplex, p.echo_tail_ms, p.send_model) == (True, 300, True)


def test_make_policy_semantic_vad() -> None:
    p = policy(turn_type="semantic_vad", eagerness="high")
    assert p.turn_detection == {"type": "semantic_vad", "eagerness": "high",
                                "create_response": True, "interrupt_response": True}


def test_make_policy_manual_turns() -> None:
    assert policy(turn_type="none").turn_detection is None


def test_make_policy_push_to_talk_overrides_vad() -> None:
    p = policy(turn_type="server_vad", push_to_talk=True, half_duplex=False,
               echo_tail_ms=0, send_model=False)
    assert p.turn_detection is None
    assert (p.half_duplex, p.echo_tail_ms, p.send_model) == (False, 0, False)


# ------------------------------------------------------------------ lifecycle, state


def test_starts_in_starting_with_no_effects() -> None:
    c = fresh()
    assert c.state is State.STARTING
    assert c.take_effects() == []
    assert (c.mic_on, c.connected, c.fatal_reason) == (False, False, None)


def test_devices_ready_before_connection_shows_not_connected() -> None:
    c = fresh()
    c.on_devices_ready()
    assert fx(c) == [show(State.CONNECTING, "not connected")]


def test_connection_before_devices_stays_starting_then_configures() -> None:
    c = fresh()
    c.on_connection_up()
    assert fx(c) == []  # still starting, same detail: nothing to show
    c.on_devices_ready()
    assert fx(c) == [show(State.CONNECTING, "waiting for session.created")]
    effects = server(c, wire.SessionCreated(session_id="sess_1", expires_at=EXPIRES))
    assert [type(e) for e in effects] == [Send, ShowState]
    assert effects[1] == show(State.CONNECTING, "configuring session")
    assert c.expires_at == EXPIRES
    assert not c.connected
    assert server(c, wire.SessionUpdated(session={})) == [show(State.READY)]
    assert c.connected


def test_session_update_ga_shape() -> None:
    c = fresh()
    effects = server(c, wire.SessionCreated(session_id="s", expires_at=None))
    assert effects[0] == send("session.update", session={
        "type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.",
        "output_modalities": ["audio"],
        "audio": {"input": {"format": FMT, "transcription": TRANSCRIPTION,
                            "turn_detection": SERVER_VAD},
                  "output": {"format": FMT, "voice": "marin"}}})
    assert c.expires_at is None


def test_session_update_manual_turns_sends_null_turn_detection() -> None:
    c = fresh(turn_type="none")
    (update,) = server(c, wire.SessionCreated(session_id="s", expires_at=EXPIRES))
    assert isinstance(update, Send)
    audio_in = update.event["session"]["audio"]["input"]  # type: ignore[typeddict-item]
    assert "turn_detection" in audio_in and audio_in["turn_detection"] is None


def test_session_update_semantic_vad() -> None:
    c = fresh(turn_type="semantic_vad", eagerness="low")
    (update,) = server(c, wire.SessionCreated(session_id="s", expires_at=EXPIRES))
    assert isinstance(update, Send)
    assert update.event["session"]["audio"]["input"]["turn_detection"] == {  # type: ignore[typeddict-item]
        "type": "semantic_vad", "eagerness": "low", "create_response": True,
        "interrupt_response": True}


def test_session_update_omits_model_behind_a_relay() -> None:
    c = fresh(send_model=False)
    (update,) = server(c, wire.SessionCreated(session_id="s", expires_at=EXPIRES))
    assert isinstance(update, Send)
    session = update.event["session"]  # type: ignore[typeddict-item]
    assert "model" not in session
    assert session["audio"]["output"]["voice"] == "marin"


def test_session_updated_logs_effective_output_format(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voiced.core")
    c = fresh()
    c.on_devices_ready()
    c.on_connection_up()
    c.take_effects()
    assert server(c, wire.SessionUpdated(session={"audio": {"output": {"format": FMT}}})
                  ) == [show(State.READY)]
    assert "session configured (output format {'type': 'audio/pcm', 'rate': 24000})" \
        in caplog.messages


def test_session_updated_tolerates_odd_audio_field(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voiced.core")
    c = fresh()
    c.on_devices_ready()
    c.on_connection_up()
    c.take_effects()
    assert server(c, wire.SessionUpdated(session={"audio": "pcm16"})) == [show(State.READY)]
    assert "session configured (output format None)" in caplog.messages


def test_state_priority_speaking_thinking_listening_ready_connecting_error() -> None:
    c = configured(half_duplex=False)
    c.on_press(0.0)
    assert fx(c) == [MicOpened(), show(State.LISTENING)]
    assert server(c, wire.SpeechStopped(audio_end_ms=900, item_id="item_u1")) == [
        show(State.THINKING)]  # thinking > listening
    assert server(c, created()) == []
    assert server(c, delta()) == [Play(pcm(samples(100)), "item_a"), show(State.SPEAKING)]
    assert server(c, audio_done()) == []  # still queued
    assert server(c, wire.SpeechStopped(audio_end_ms=2000, item_id="item_u2")) == []
    c.on_playback_drained(1.0)  # speaking > thinking: only now does thinking show
    assert fx(c) == [show(State.THINKING)]
    assert server(c, created("resp_2")) == []
    assert server(c, delta(item="item_b", resp="resp_2")) == [
        Play(pcm(samples(100)), "item_b"), show(State.SPEAKING)]
    c.on_connection_down("server closed 1006")  # connecting > speaking
    assert fx(c) == [show(State.CONNECTING, "server closed 1006")]
    c.on_fatal("no microphone")  # error > connecting
    assert fx(c) == [show(State.ERROR, "no microphone")]
    assert c.fatal_reason == "no microphone"
    c.on_fatal_cleared()
    assert fx(c) == [show(State.CONNECTING, "server closed 1006")]
    c.on_playback_drained(2.0)
    assert fx(c) == []  # still connecting
    c.on_connection_up()
    assert fx(c) == [show(State.CONNECTING, "waiting for session.created")]
    assert [type(e) for e in server(c, wire.SessionCreated("s", EXPIRES))] == [
        Send, ShowState]
    assert server(c, wire.SessionUpdated(session={})) == [show(State.LISTENING)]
    c.on_press(3.0)
    assert fx(c) == [show(State.READY)]


def test_error_outranks_starting_outranks_connecting() -> None:
    c = fresh()
    c.on_fatal("config problem")
    assert fx(c) == [show(State.ERROR, "config problem")]
    c.on_connection_up()
    c.on_devices_ready()
    assert fx(c) == []  # error hides everything else
    c.on_fatal_cleared()
    assert fx(c) == [show(State.CONNECTING, "waiting for session.created")]

    c = fresh()
    c.on_fatal("bad key")
    c.on_fatal_cleared()
    assert fx(c) == [show(State.ERROR, "bad key"), show(State.STARTING, "devices opening")]


def test_device_fault_shows_error_until_restored_and_ranks_below_fatal() -> None:
    c = configured()
    c.on_press(0.0)
    assert fx(c) == [MicOpened(), show(State.LISTENING)]
    c.on_device_fault("microphone \"USB mic\" lost, retrying")
    assert fx(c) == [show(State.ERROR, "microphone \"USB mic\" lost, retrying")]
    c.on_fatal("bad key")  # a fault needing a person outranks one that heals itself
    assert fx(c) == [show(State.ERROR, "bad key")]
    c.on_fatal_cleared()
    assert fx(c) == [show(State.ERROR, "microphone \"USB mic\" lost, retrying")]
    c.on_device_restored()
    assert fx(c) == [show(State.LISTENING)]  # the user's mic choice survived the fault
    assert c.mic_on


def test_show_state_only_on_change_of_state_or_detail() -> None:
    c = configured()
    assert server(c, wire.Unhandled(type="rate_limits.updated", raw={})) == []
    c.on_talk_end(0.0)  # mic already off
    assert fx(c) == []
    c.on_connection_down("network unreachable")
    assert fx(c) == [show(State.CONNECTING, "network unreachable")]
    c.on_connection_down("network unreachable")
    assert fx(c) == []
    c.on_connection_down("dns failure")  # same state, new detail
    assert fx(c) == [show(State.CONNECTING, "dns failure")]


def test_status_fields() -> None:
    c = fresh()
    assert c.status() == {
        "state": "starting", "detail": "devices opening", "mic": "off", "connected": False,
        "conversation_id": "conv-1", "session_expires_at": None, "audio_sent_ms": 0,
        "interruptions": 0, "server_errors": 0, "playback_underruns": 0,
        "tool_calls": 0, "pending_items": 0, "transcript_bytes": 0, "playback_overflows": 0}
    c = configured()
    c.on_press(0.0)
    c.on_audio_captured(pcm(samples(40)), 0.0)
    server(c, error("invalid_value"))
    assert c.status() == {
        "state": "listening", "detail": "listening", "mic": "on", "connected": True,
        "conversation_id": "conv-1", "session_expires_at": EXPIRES, "audio_sent_ms": 40,
        "interruptions": 0, "server_errors": 1, "playback_underruns": 0,
        "tool_calls": 0, "pending_items": 0, "transcript_bytes": 0, "playback_overflows": 0}
    c.on_connection_down("gone")
    status = c.status()
    assert (status["state"], status["connected"], status["mic"]) == ("connecting", False, "on")


# --------------------------------------------------------------------- mic frames


def test_short_press_toggles_mic() -> None:
    c = configured()
    c.on_press(0.0)
    assert fx(c) == [MicOpened(), show(State.LISTENING)]
    assert c.mic_on
    c.on_press(1.0)
    assert fx(c) == [show(State.READY)]  # server VAD, no speech: nothing to send
    assert not c.mic_on


def test_frames_dropped_while_mic_off() -> None:
    c = configured()
    c.on_audio_captured(pcm(480), 0.0)
    assert fx(c) == []
    assert c.counters.appended_samples == 0
    assert c.counters.frames_muted == 0


def test_frames_spoken_while_connecting_are_sent_once_configured() -> None:
    c = fresh()
    c.on_devices_ready()
    c.on_connection_up()
    c.take_effects()
    c.on_press(0.0)
    assert fx(c) == [MicOpened()]  # mic on, still connecting
    c.on_audio_captured(pcm(480), 0.0)
    assert fx(c) == []  # kept, not sent: there is no session yet
    server(c, wire.SessionCreated("s", EXPIRES))
    assert server(c, wire.SessionUpdated(session={})) == [append(pcm(480)),
                                                           show(State.LISTENING)]
    c.on_audio_captured(pcm(480), 0.1)
    assert fx(c) == [append(pcm(480))]
    assert c.counters.appended_samples == 960
    assert server(c, wire.SessionUpdated(session={})) == []  # a repeat changes nothing


def test_frames_streamed_and_counted() -> None:
    c = configured()
    c.on_press(0.0)
    c.take_effects()
    c.on_audio_captured(pcm(480), 0.0)
    assert fx(c) == [append(pcm(480))]
    c.on_audio_captured(pcm(960), 0.02)
    assert fx(c) == [append(pcm(960))]
    assert c.counters.appended_samples == 1440
    assert c.status()["audio_sent_ms"] == 60


def test_half_duplex_mutes_while_audio_queued() -> None:
    c = configured()
    c.on_press(0.0)
    c.take_effects()
    assert server(c, created()) == [show(State.THINKING)]
    assert server(c, delta()) == [Play(pcm(samples(100)), "item_a"), show(State.SPEAKING)]
    c.on_audio_captured(pcm(480), 0.5)
    assert fx(c) == []
    assert c.counters.frames_muted == 1
    assert c.counters.appended_samples == 0


def test_half_duplex_mutes_for_echo_tail_after_drain() -> None:
    c = configured()
    c.on_press(0.0)
    c.take_effects()
    assert server(c, created()) == [show(State.THINKING)]
    assert server(c, delta()) == [Play(pcm(samples(100)), "item_a"), show(State.SPEAKING)]
    assert server(c, audio_done()) == []
    c.on_playback_drained(10.0)
    assert fx(c) == [show(State.LISTENING)]
    c.on_audio_captured(pcm(480), 10.2)
    assert fx(c) == []
    c.on_audio_captured(pcm(480), 10.31)
    assert fx(c) == [append(pcm(480))]
    assert c.counters.frames_muted == 1


def test_half_duplex_mutes_for_echo_tail_after_interruption() -> None:
    c = configured()
    speaking(c)
    c.on_press(5.0)
    assert fx(c) == [cancel(), StopPlayback(), MicOpened()]
    c.on_playback_stopped(5.0, {"item_a": samples(100)})
    assert fx(c) == [truncate("item_a", 100), show(State.LISTENING)]
    c.on_audio_captured(pcm(480), 5.1)
    assert fx(c) == []
    c.on_audio_captured(pcm(480), 5.4)
    assert fx(c) == [append(pcm(480))]


def test_full_duplex_never_mutes() -> None:
    c = configured(half_duplex=False)
    c.on_press(0.0)
    c.take_effects()
    server(c, created())
    server(c, delta())
    c.on_audio_captured(pcm(480), 0.1)
    assert fx(c) == [append(pcm(480))]
    server(c, audio_done())
    c.on_playback_drained(1.0)
    assert fx(c) == [show(State.LISTENING)]
    c.on_audio_captured(pcm(480), 1.0)
    assert fx(c) == [append(pcm(480))]
    assert c.counters.frames_muted == 0
    assert c.counters.appended_samples == 960


def test_every_send_has_a_unique_event_id() -> None:
    c = fresh(turn_type="none")
    c.on_devices_ready()
    c.on_connection_up()
    raw: list[Effect] = []
    c.on_server_event(wire.SessionCreated("s", EXPIRES), 0.0)
    c.on_server_event(wire.SessionUpdated(session={}), 0.0)
    raw += c.take_effects()
    for round_ in range(3):
        c.on_press(float(round_))
        for _ in range(5):
            c.on_audio_captured(pcm(1200), float(round_))
        c.on_press(float(round_))  # commit + response.create
        raw += c.take_effects()
    c.on_server_event(created(), 5.0)
    c.on_server_event(delta(), 5.0)
    c.on_interrupt(5.0)
    raw += c.take_effects()
    c.on_playback_stopped(5.0, {"item_a": 10})
    raw += c.take_effects()
    ids = [e.event["event_id"] for e in raw if isinstance(e, Send)]
    assert len(ids) == 1 + 3 * 7 + 1 + 1
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("voiced_") for i in ids)


# ------------------------------------------------------------- press, barge-in


def test_press_while_speaking_cancels_stops_and_truncates_at_played_position() -> None:
    c = configured()
    speaking(c, samples(500))
    c.on_press(1.0)
    assert fx(c) == [cancel("resp_1"), StopPlayback(), MicOpened()]
    assert c.state is State.SPEAKING  # until the device says what it played
    assert c.mic_on
    c.on_playback_stopped(1.0, {"item_a": 6000})
    assert fx(c) == [truncate("item_a", 250), show(State.LISTENING)]
    assert c.counters.interruptions == 1


def test_truncate_ms_rounds_down_and_keeps_content_index() -> None:
    c = configured()
    speaking(c, samples(500), content_index=1)
    c.on_press(1.0)
    assert fx(c) == [cancel(), StopPlayback(), MicOpened()]
    c.on_playback_stopped(1.0, {"item_a": 1000})  # 41.67 ms
    assert fx(c) == [truncate("item_a", 41, content_index=1), show(State.LISTENING)]


def test_record_heard_ms_is_the_truncations_ms() -> None:
    """The record's heard_ms and the truncation's audio_end_ms come from one count, so
    they agree to the ms: both round down (a count ending mid-ms, as after the Opus
    decoder's 156-sample pre-skip, once gave a record 1 ms past the truncation)."""
    for played, ms in ((1000, 41), (12_324, 513)):  # 41.67 ms; 513.5 ms
        c = configured()
        speaking(c, samples(1000))
        c.on_press(1.0)
        c.take_effects()
        c.on_playback_stopped(1.0, {"item_a": played})
        assert fx(c) == [truncate("item_a", ms), show(State.LISTENING)]
        assert server(c, said("Cut short.")) == [
            assistant("Cut short.", interrupted=True, heard_ms=ms)]


def test_played_beyond_received_is_clamped_and_needs_no_truncate() -> None:
    c = configured()
    speaking(c, samples(100))
    assert server(c, audio_done()) == []  # the item's audio is all here
    c.on_press(1.0)
    assert fx(c) == [cancel(), StopPlayback(), MicOpened()]
    c.on_playback_stopped(1.0, {"item_a": samples(900)})
    assert fx(c) == [show(State.LISTENING)]
    assert server(c, said("Hello there.")) == [
        assistant("Hello there.", interrupted=True, heard_ms=100)]


def test_all_received_heard_but_more_coming_is_still_truncated() -> None:
    """Playback had run dry while the reply still streamed (the network fell behind):
    the user heard all that arrived, but the server holds audio and words past it."""
    c = configured()
    speaking(c, samples(1000))
    c.on_playback_drained(1.0)
    assert fx(c) == []  # still speaking: an underrun, not the end
    assert c.counters.underruns == 1
    c.on_press(1.1)
    assert fx(c) == [cancel(), StopPlayback(), MicOpened()]
    c.on_playback_stopped(1.1, {})  # nothing was queued any more
    assert fx(c) == [truncate("item_a", 1000), show(State.LISTENING)]


def test_press_while_speaking_after_response_done_sends_no_cancel() -> None:
    c = configured()
    speaking(c, samples(500))
    assert server(c, done()) == []  # all audio here, still playing
    c.on_press(1.0)
    assert fx(c) == [StopPlayback(), MicOpened()]
    c.on_playback_stopped(1.0, {"item_a": samples(100)})
    assert fx(c) == [truncate("item_a", 100), show(State.LISTENING)]


def test_interruption_while_disconnected_sends_nothing() -> None:
    c = configured()
    speaking(c, samples(500))
    c.on_connection_down("server closed 1006")
    assert fx(c) == [show(State.CONNECTING, "server closed 1006")]
    c.on_press(1.0)
    assert fx(c) == [StopPlayback(), MicOpened()]
    c.on_playback_stopped(1.0, {"item_a": samples(100)})
    assert fx(c) == []  # no truncate: nobody to tell; state still connecting


def test_a_reply_left_from_the_last_session_is_not_truncated_in_the_new_one() -> None:
    """The connection dropped mid-reply and came back while the rest played out: a press
    then stops it, but the new session never had that item, so it is not told to cut it."""
    c = configured()
    speaking(c, samples(500))
    c.on_connection_down("server closed 1006")
    reconnected(c)
    fx(c)
    c.on_press(1.0)
    assert fx(c) == [StopPlayback(), MicOpened()]  # no cancel either: nothing active
    c.on_playback_stopped(1.0, {"item_a": samples(100)})
    assert [e for e in fx(c) if isinstance(e, Send)] == []
    speaking(c, samples(500), item="item_b", resp="resp_2")  # the new session's own reply
    c.on_press(2.0)
    fx(c)
    c.on_playback_stopped(2.0, {"item_b": samples(100)})
    assert truncate("item_b", 100) in fx(c)


def test_cancelled_response_deltas_are_dropped() -> None:
    c = configured()
    speaking(c)
    c.on_press(1.0)
    c.take_effects()
    c.on_playback_stopped(1.0, {"item_a": 100})
    c.take_effects()
    assert server(c, delta()) == []  # in flight when we cancelled
    assert server(c, delta(item="item_b")) == []  # a new item of the same response
    assert c.counters.deltas_dropped == 2
    assert server(c, done(status="cancelled", reason="client_cancelled")) == []
    assert server(c, delta()) == []  # response forgotten, but item_a has finished
    assert c.counters.deltas_dropped == 3
    assert c.state is State.LISTENING



def test_reply_audio_while_the_devices_are_down_is_cancelled_unheard() -> None:
    """A reply that starts while the speaker is closed (a device fault, being retried) is
    heard by nobody: cancelled and truncated at 0 ms at once, not queued to play late
    (nor left queued in a closed speaker, the state stuck at speaking, the mic muted)."""
    c = configured()
    assert server(c, created()) == [show(State.THINKING)]
    fault = 'speaker "USB Audio" stopped (unplugged or failed); retrying'
    c.on_device_fault(fault)
    assert fx(c) == [show(State.ERROR, fault)]
    assert server(c, delta(samples(200))) == [cancel(), truncate("item_a", 0)]
    assert server(c, delta(samples(200))) == []  # the rest of the cancelled response
    assert server(c, said("Hello there.")) == [
        assistant("Hello there.", interrupted=True, heard_ms=0)]
    assert server(c, done(status="cancelled", reason="client_cancelled")) == []
    c.on_device_restored()
    assert fx(c) == [show(State.READY)]
    c.on_press(1.0)
    assert fx(c) == [MicOpened(), show(State.LISTENING)]
    c.on_audio_captured(pcm(480), 2.0)  # not muted as if the reply were playing
    assert fx(c) == [append(pcm(480))]


def test_interruption_leaves_earlier_finished_items_alone() -> None:
    c = configured()
    speaking(c, samples(100))
    server(c, audio_done())
    c.on_playback_drained(1.0)
    assert fx(c) == [show(State.READY)]
    assert server(c, done()) == []  # item_a ends with no transcript
    assert server(c, created("resp_2")) == [show(State.THINKING)]
    assert server(c, delta(samples(100), item="item_b", resp="resp_2")) == [
        Play(pcm(samples(100)), "item_b"), show(State.SPEAKING)]
    assert server(c, delta(samples(100), item="item_b", resp="resp_2")) == [
        Play(pcm(samples(100)), "item_b")]
    c.on_press(2.0)
    assert fx(c) == [cancel("resp_2"), StopPlayback(), MicOpened()]
    c.on_playback_stopped(2.0, {"item_a": 0, "item_b": samples(150)})
    assert fx(c) == [truncate("item_b", 150), show(State.LISTENING)]


def test_response_done_for_another_response_keeps_the_active_one() -> None:
    c = configured()
    assert server(c, created("resp_1")) == [show(State.THINKING)]
    assert server(c, created("resp_2")) == []
    assert server(c, done("resp_1")) == [show(State.READY)]
    assert server(c, delta(item="item_b", resp="resp_2")) == [
        Play(pcm(samples(100)), "item_b"), show(State.SPEAKING)]
    c.on_interrupt(1.0)
    assert fx(c) == [cancel("resp_2"), StopPlayback()]

def test_speech_started_while_speaking_interrupts_without_cancel(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voiced.core")
    c = configured(half_duplex=False)
    c.on_press(0.0)
    c.take_effects()
    server(c, created())
    server(c, delta(samples(500)))
    assert server(c, wire.SpeechStarted(audio_start_ms=1200, item_id="item_u")) == [
        StopPlayback()]
    assert "barge-in: user speech while speaking" in caplog.messages
    assert c.counters.interruptions == 1
    c.on_playback_stopped(1.0, {"item_a": 1200})
    assert fx(c) == [truncate("item_a", 50), show(State.LISTENING)]
    assert server(c, delta()) == []
    assert c.counters.deltas_dropped == 1
    assert server(c, done(status="cancelled", reason="turn_detected")) == []


def test_speech_started_while_not_speaking_changes_nothing() -> None:
    c = configured()
    c.on_press(0.0)
    c.take_effects()
    assert server(c, wire.SpeechStarted(audio_start_ms=0, item_id="item_u")) == []
    assert c.counters.interruptions == 0


def test_ctl_interrupt_while_speaking() -> None:
    c = configured()
    speaking(c)
    c.on_interrupt(1.0)
    assert fx(c) == [cancel(), StopPlayback()]
    assert not c.mic_on
    c.on_playback_stopped(1.0, {"item_a": 0})
    assert fx(c) == [truncate("item_a", 0), show(State.READY)]


def test_ctl_interrupt_when_not_speaking_does_nothing() -> None:
    c = configured()
    c.on_interrupt(0.0)
    assert fx(c) == []
    assert server(c, created()) == [show(State.THINKING)]
    c.on_interrupt(1.0)  # thinking, nothing playing yet
    assert fx(c) == []
    assert c.counters.interruptions == 0


# -------------------------------------------------------------------- long press


def test_long_press_starts_a_new_conversation() -> None:
    c = configured()
    c.on_press(0.0)
    c.take_effects()
    c.on_long_press(1.0)
    assert fx(c) == [Reconnect("new conversation"), show(State.READY)]
    assert c.conversation_id == "conv-2"
    assert not c.mic_on
    c.on_long_press(2.0)
    assert fx(c) == [Reconnect("new conversation")]
    assert c.conversation_id == "conv-3"


def test_long_press_while_speaking_interrupts_first() -> None:
    c = configured(half_duplex=False)
    c.on_press(0.0)
    c.take_effects()
    server(c, created())
    server(c, delta(samples(500)))
    c.on_long_press(1.0)
    assert fx(c) == [cancel(), StopPlayback(), Reconnect("new conversation")]
    assert not c.mic_on
    c.on_playback_stopped(1.0, {"item_a": samples(200)})
    assert fx(c) == [truncate("item_a", 200), show(State.READY)]


# ------------------------------------------------------------------- manual turns


def test_manual_mic_off_commits_and_requests_a_response() -> None:
    c = configured(turn_type="none")
    c.on_press(0.0)
    assert fx(c) == [MicOpened(), show(State.LISTENING)]
    c.on_audio_captured(pcm(1200), 0.0)
    c.on_audio_captured(pcm(1200), 0.05)  # exactly 100 ms in all
    assert fx(c) == [append(pcm(1200)), append(pcm(1200))]
    c.on_press(0.1)
    assert fx(c) == [COMMIT, CREATE, show(State.THINKING)]


def test_manual_mic_off_too_short_clears(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voiced.core")
    c = configured(turn_type="none")
    c.on_press(0.0)
    c.take_effects()
    c.on_audio_captured(pcm(samples(100) - 1), 0.0)
    c.take_effects()
    c.on_press(0.1)
    assert fx(c) == [CLEAR, show(State.READY)]
    assert "turn too short to send (100 ms); discarded" in caplog.messages
    c.on_press(0.2)
    c.on_press(0.3)  # uncommitted was reset: nothing to clear the second time
    assert fx(c) == [MicOpened(), show(State.LISTENING), show(State.READY)]


def test_manual_mic_off_with_nothing_sends_nothing() -> None:
    c = configured(turn_type="none")
    c.on_press(0.0)
    c.take_effects()
    c.on_press(0.1)
    assert fx(c) == [show(State.READY)]


def test_manual_buffer_committed_resets_uncommitted() -> None:
    c = configured(turn_type="none")
    c.on_press(0.0)
    c.on_audio_captured(pcm(samples(200)), 0.0)
    c.take_effects()
    assert server(c, wire.BufferCommitted(item_id="item_u")) == []
    c.on_press(0.3)
    assert fx(c) == [show(State.READY)]


def test_manual_mic_off_while_unconfigured_sends_nothing() -> None:
    c = fresh(turn_type="none")
    c.on_devices_ready()
    c.take_effects()
    c.on_press(0.0)
    c.on_audio_captured(pcm(samples(200)), 0.0)  # dropped: not configured
    c.on_press(0.5)
    assert fx(c) == [MicOpened()]


def test_speech_the_old_session_never_committed_is_replayed_into_the_new_one() -> None:
    c = configured(turn_type="none")
    c.on_press(0.0)
    c.on_audio_captured(pcm(samples(200)), 0.0)
    c.take_effects()
    c.on_connection_down("server closed 1006")
    c.on_audio_captured(pcm(samples(100)), 0.5)  # still talking during the reconnect
    assert reconnected(c) == [
        append(pcm(samples(200))), append(pcm(samples(100))), show(State.LISTENING)]
    c.on_press(1.0)
    assert fx(c) == [COMMIT, CREATE, show(State.THINKING)]
    assert c.expires_at == EXPIRES + 60


def test_push_to_talk_released_during_a_reconnect_is_committed_after_replay() -> None:
    c = configured(push_to_talk=True)
    c.on_talk_start(0.0)
    c.on_audio_captured(pcm(samples(300)), 0.1)
    c.on_connection_down("server closed 1006")
    c.on_talk_end(0.5)
    assert reconnected(c) == [
        append(pcm(samples(300))), COMMIT, CREATE, show(State.THINKING)]


def test_a_long_outage_keeps_only_the_last_15_s_of_speech() -> None:
    c = configured()
    c.on_press(0.0)
    c.take_effects()
    c.on_connection_down("network unreachable")
    for i in range(800):  # 16 s in 20 ms frames
        c.on_audio_captured(pcm(samples(20)), i * 0.02)
    assert c.counters.backlog_dropped == 50
    sent = reconnected(c)
    assert len([e for e in sent if isinstance(e, Send)]) == 750


def test_committed_speech_is_not_replayed() -> None:
    c = configured()
    c.on_press(0.0)
    c.on_audio_captured(pcm(samples(200)), 0.0)
    server(c, wire.BufferCommitted(item_id="item_u"))
    c.take_effects()
    c.on_connection_down("server closed 1006")
    assert reconnected(c) == [show(State.LISTENING)]


def test_push_to_talk_commits_on_release() -> None:
    c = configured(push_to_talk=True)
    c.on_talk_start(0.0)
    assert fx(c) == [MicOpened(), show(State.LISTENING)]
    c.on_talk_start(0.1)  # already down
    assert fx(c) == []
    c.on_audio_captured(pcm(samples(300)), 0.2)
    assert fx(c) == [append(pcm(samples(300)))]
    c.on_talk_end(0.5)
    assert fx(c) == [COMMIT, CREATE, show(State.THINKING)]
    c.on_talk_end(0.6)
    assert fx(c) == []


def test_push_to_talk_start_while_speaking_interrupts() -> None:
    c = configured(push_to_talk=True)
    speaking(c)
    c.on_talk_start(1.0)
    assert fx(c) == [cancel(), StopPlayback(), MicOpened()]
    c.on_playback_stopped(1.0, {"item_a": samples(100)})
    assert fx(c) == [truncate("item_a", 100), show(State.LISTENING)]


def test_a_reply_waiting_for_a_cancelled_one_is_not_asked_of_the_next_session() -> None:
    """Push to talk over a reply: the new turn's response.create waits for the cancelled
    response to end. If the connection drops first, the turn went with that session: the
    next session must not get an unprompted response.create at its first response.done."""
    c = configured(push_to_talk=True, half_duplex=False)
    speaking(c)
    c.on_talk_start(1.0)
    c.on_playback_stopped(1.0, {"item_a": samples(100)})
    c.take_effects()
    c.on_audio_captured(pcm(samples(500)), 1.1)
    c.on_talk_end(1.6)
    assert [e for e in fx(c) if isinstance(e, Send)][-1] == COMMIT  # create waits
    c.on_connection_down("server closed 1006")
    reconnected(c)
    c.on_talk_start(2.0)
    c.on_audio_captured(pcm(samples(500)), 2.1)
    c.on_talk_end(2.6)
    assert [e for e in fx(c) if isinstance(e, Send)][-2:] == [COMMIT, CREATE]
    server(c, created("resp_2"))
    server(c, delta(samples(100), item="item_b", resp="resp_2"))
    server(c, audio_done("item_b", "resp_2"))
    assert CREATE not in server(c, done("resp_2"))  # only the one asked for


# --------------------------------------------------------------------- server VAD


def test_server_vad_mic_off_mid_speech_clears_the_half_utterance() -> None:
    c = configured()
    c.on_press(0.0)
    c.on_audio_captured(pcm(samples(200)), 0.0)
    c.take_effects()
    assert server(c, wire.SpeechStarted(audio_start_ms=0, item_id="item_u")) == []
    c.on_press(0.5)
    assert fx(c) == [CLEAR, show(State.READY)]
    c.on_press(1.0)
    c.on_press(1.5)  # no speech in progress now: nothing to clear
    assert fx(c) == [MicOpened(), show(State.LISTENING), show(State.READY)]


def test_server_vad_mic_off_after_speech_stopped_sends_nothing() -> None:
    c = configured()
    c.on_press(0.0)
    c.take_effects()
    server(c, wire.SpeechStarted(audio_start_ms=0, item_id="item_u"))
    assert server(c, wire.SpeechStopped(audio_end_ms=800, item_id="item_u")) == [
        show(State.THINKING)]
    c.on_press(1.0)
    assert fx(c) == []  # still thinking
    assert server(c, wire.BufferCommitted(item_id="item_u")) == []


# -------------------------------------------------------------------- transcripts


def test_user_transcript_recorded() -> None:
    c = configured()
    assert server(c, heard("  what's the weather like \n")) == [
        user("what's the weather like")]


def test_empty_user_transcript_ignored() -> None:
    c = configured()
    assert server(c, heard("  ")) == []


def test_user_transcription_failure_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    c = configured()
    failed = wire.InputTranscriptionFailed(item_id="item_u", message="audio unclear")
    assert server(c, failed) == []
    assert caplog.messages == [
        "transcription of the user's words failed (item item_u): audio unclear"]


def test_assistant_transcript_recorded_only_after_drain() -> None:
    c = configured()
    speaking(c, samples(200))
    assert server(c, audio_done()) == []
    assert server(c, said("Sunny and warm.")) == [draft("Sunny and warm.")]
    assert server(c, done(transcripts={"item_a": "Sunny and warm."})) == []
    c.on_playback_drained(2.0)
    assert fx(c) == [assistant("Sunny and warm.", heard_ms=200), show(State.READY)]


def words(text: str, item: str = "item_a", resp: str = "resp_1") -> wire.AudioTranscriptDelta:
    return wire.AudioTranscriptDelta(response_id=resp, item_id=item, delta=text)


def test_a_reply_cut_by_a_dropped_connection_is_recorded_with_its_words_so_far() -> None:
    """The connection drops mid-reply: what arrived plays out, and the words that came
    with it (transcript deltas; the .done never comes) are the record. It used to be
    nothing at all, and the item stayed in memory for good."""
    c = configured()
    speaking(c, samples(300))
    assert server(c, words("Sunny and")) == []
    assert server(c, words(" warm, with")) == []
    c.on_connection_down("server closed 1006")
    fx(c)
    c.on_playback_drained(2.0)
    assert fx(c) == [assistant("Sunny and warm, with", heard_ms=300)]
    assert c.replies.items == {}


def test_a_reply_with_no_words_at_all_is_forgotten_once_played() -> None:
    c = configured()
    speaking(c, samples(300))
    c.on_connection_down("server closed 1006")
    fx(c)
    c.on_playback_drained(2.0)
    assert [e for e in fx(c) if isinstance(e, Record)] == []
    assert c.replies.items == {}


def test_transcript_deltas_give_way_to_the_done() -> None:
    c = configured()
    speaking(c, samples(200))
    server(c, words("Sunny"))
    server(c, audio_done())
    server(c, said("Sunny and warm."))
    server(c, done())
    c.on_playback_drained(2.0)
    assert fx(c) == [assistant("Sunny and warm.", heard_ms=200), show(State.READY)]


def test_audio_done_after_playback_caught_up_finishes_the_item() -> None:
    c = configured()
    speaking(c, samples(200))
    c.on_playback_drained(1.0)  # an underrun: the stream is not over
    assert fx(c) == []
    assert c.state is State.SPEAKING
    assert c.status()["playback_underruns"] == 1
    assert server(c, audio_done()) == [show(State.READY)]
    assert server(c, said("Hi.")) == [assistant("Hi.", heard_ms=200)]
    assert server(c, done()) == []


def test_transcript_from_response_done_when_transcript_done_never_came() -> None:
    c = configured()
    speaking(c, samples(300))
    server(c, audio_done())
    assert server(c, done(transcripts={"item_a": "From response.done."})) == [
        draft("From response.done.")]
    c.on_playback_drained(1.0)
    assert fx(c) == [assistant("From response.done.", heard_ms=300), show(State.READY)]


def test_transcript_done_wins_over_response_done() -> None:
    c = configured()
    speaking(c, samples(300))
    server(c, audio_done())
    server(c, said("The real words."))
    assert server(c, done(transcripts={"item_a": "Other words."})) == []
    c.on_playback_drained(1.0)
    assert fx(c) == [assistant("The real words.", heard_ms=300), show(State.READY)]


def test_response_done_with_no_audio() -> None:
    c = configured()
    assert server(c, created()) == [show(State.THINKING)]
    assert server(c, done(transcripts={"item_unknown": "never had audio"})) == [
        show(State.READY)]


def test_response_done_not_completed_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voiced.core")
    c = configured()
    c.on_press(0.0)
    c.take_effects()
    server(c, created())
    assert server(c, done(status="incomplete", reason="max_output_tokens")) == [
        show(State.LISTENING)]
    server(c, created("resp_2"))
    assert server(c, done("resp_2", status="failed")) == [show(State.LISTENING)]
    assert "response resp_1 ended incomplete (max_output_tokens)" in caplog.messages
    assert "response resp_2 ended failed" in caplog.messages


def test_text_only_item_recorded_when_response_done() -> None:
    c = configured()
    server(c, created())
    assert server(c, said("Only words.")) == [draft("Only words.")]
    assert server(c, done()) == [assistant("Only words.", heard_ms=0), show(State.READY)]


def test_item_without_transcript_is_given_up_at_response_done(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voiced.core")
    c = configured()
    speaking(c, samples(100))
    server(c, audio_done())
    c.on_playback_drained(1.0)
    assert fx(c) == [show(State.READY)]
    assert server(c, done()) == []
    assert "assistant item item_a ended with no transcript" in caplog.messages
    assert server(c, said("Too late.")) == []


def test_deltas_after_item_finished_are_dropped() -> None:
    c = configured()
    speaking(c, samples(100))
    c.on_playback_drained(1.0)
    server(c, audio_done())
    c.take_effects()
    assert server(c, delta()) == []
    assert c.counters.deltas_dropped == 1


def test_audio_done_for_unknown_or_finished_item_is_ignored() -> None:
    c = configured()
    assert server(c, audio_done(item="item_zzz")) == []
    speaking(c)
    c.on_press(1.0)
    c.on_playback_stopped(1.0, {"item_a": 100})
    c.take_effects()
    assert server(c, audio_done()) == []
    assert server(c, said("Cut short.")) == [
        assistant("Cut short.", interrupted=True, heard_ms=4)]


def test_connection_down_mid_response_keeps_playing_and_records_after_drain() -> None:
    c = configured()
    speaking(c, samples(200))
    assert server(c, said("Partial reply.")) == [draft("Partial reply.")]
    c.on_connection_down("server closed 1006")
    assert fx(c) == [show(State.CONNECTING, "server closed 1006")]
    c.on_audio_captured(pcm(480), 1.0)
    assert fx(c) == []
    c.on_playback_drained(2.0)
    assert fx(c) == [assistant("Partial reply.", heard_ms=200)]
    assert c.state is State.CONNECTING


def test_connection_down_after_playback_caught_up_records_at_once() -> None:
    c = configured()
    speaking(c, samples(200))
    c.on_playback_drained(1.0)
    assert server(c, said("Short one.")) == [draft("Short one.")]
    c.on_connection_down("server closed 1011")
    assert fx(c) == [assistant("Short one.", heard_ms=200),
                     show(State.CONNECTING, "server closed 1011")]


def test_connection_down_while_thinking_ends_the_wait() -> None:
    c = configured()
    assert server(c, created()) == [show(State.THINKING)]
    c.on_connection_down("gone")
    c.on_connection_up()
    server(c, wire.SessionCreated("s", EXPIRES))
    c.take_effects()
    assert server(c, wire.SessionUpdated(session={})) == [show(State.READY)]


def test_relay_conversation_created_changes_conversation_id() -> None:
    c = configured(send_model=False)
    assert server(c, wire.RelayConversationCreated(conversation_id="relay-9")) == []
    assert c.conversation_id == "relay-9"
    assert c.status()["conversation_id"] == "relay-9"
    assert server(c, heard("hello")) == [user("hello", conversation_id="relay-9")]


def test_unhandled_and_informational_events_ignored() -> None:
    c = configured()
    assert server(c, wire.Unhandled(type="rate_limits.updated", raw={"rate_limits": []})) \
        == []
    assert server(c, wire.ItemTruncated(item_id="item_a", audio_end_ms=250)) == []
    assert c.state is State.READY


# ------------------------------------------------------------------------- errors


def test_quiet_error_only_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="voiced.core")
    c = configured()
    caplog.clear()
    assert server(c, error("response_cancel_not_active")) == []
    assert c.counters.server_errors == 1
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert caplog.messages == ["server: response_cancel_not_active"]


def test_quiet_error_names_the_client_event(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="voiced.core")
    c = configured()
    speaking(c)
    c.on_interrupt(1.0)
    (cancel_send, _) = c.take_effects()
    assert isinstance(cancel_send, Send)
    eid = cancel_send.event["event_id"]
    caplog.clear()
    assert server(c, error("response_cancel_not_active", event_id=eid)) == []
    assert caplog.messages == [f"server: response_cancel_not_active (in reply to "
                               f"response.cancel {eid})"]


def test_warning_error_logged_with_param(caplog: pytest.LogCaptureFixture) -> None:
    c = configured()
    assert server(c, error("invalid_value", message="bad voice",
                           param="session.audio.output.voice")) == []
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING,
         "server error invalid_value: bad voice [param session.audio.output.voice]")]
    assert c.state is State.READY


def test_error_without_code_uses_its_type(caplog: pytest.LogCaptureFixture) -> None:
    c = configured()
    assert server(c, error(None, type_="relay_error", message="upstream gone")) == []
    assert caplog.messages == ["server error relay_error: upstream gone"]


def test_error_names_the_client_event_it_answers(caplog: pytest.LogCaptureFixture) -> None:
    c = configured(turn_type="none")
    c.on_press(0.0)
    c.on_audio_captured(pcm(samples(100)), 0.0)
    c.on_press(0.1)
    commit = next(e for e in c.take_effects()
                  if isinstance(e, Send) and e.event["type"] == "input_audio_buffer.commit")
    eid = commit.event["event_id"]
    assert server(c, error("input_audio_buffer_commit_empty", message="buffer too small",
                           event_id=eid)) == []
    assert caplog.messages == [f"server error input_audio_buffer_commit_empty: buffer too "
                               f"small (in reply to input_audio_buffer.commit {eid})"]


def test_error_naming_an_unknown_or_forgotten_event(caplog: pytest.LogCaptureFixture) -> None:
    c = configured()  # voiced_1 was the session.update
    c.on_press(0.0)
    for _ in range(256):  # voiced_2 .. voiced_257; 256 remembered
        c.on_audio_captured(pcm(480), 0.0)
    c.take_effects()
    server(c, error("invalid_value", message="old", event_id="voiced_1"))
    server(c, error("invalid_value", message="kept", event_id="voiced_2"))
    server(c, error("invalid_value", message="never sent", event_id="client_9"))
    assert caplog.messages == [
        "server error invalid_value: old",
        "server error invalid_value: kept (in reply to input_audio_buffer.append (20 ms) "
        "voiced_2)",
        "server error invalid_value: never sent"]
    assert c.counters.server_errors == 3


@pytest.mark.parametrize(("code", "detail"), [
    ("invalid_api_key", "the server refused the session: invalid_api_key: check the API key"),
    ("beta_api_shape_disabled", "the server refused the session: beta_api_shape_disabled"),
    ("invalid_model", "the server refused the session: invalid_model"),
    ("missing_model", "the server refused the session: missing_model"),
])
def test_fatal_errors_enter_error_state(code: str, detail: str) -> None:
    c = fresh()
    c.on_devices_ready()
    c.on_connection_up()
    server(c, wire.SessionCreated("s", EXPIRES))  # the set-up is what the server refuses
    assert server(c, error(code)) == [show(State.ERROR, detail)]
    assert c.fatal_reason == detail
    assert c.status()["state"] == "error"
    c.on_fatal_cleared()
    assert fx(c) == [show(State.CONNECTING, "configuring session")]


@pytest.mark.parametrize("code", ["invalid_api_key", "invalid_model"])
def test_a_fatal_error_code_in_a_session_that_works_is_not_an_error_state(code: str) -> None:
    """Issue 17 (low): an in-session `invalid_api_key` error left `error` shown while the
    session went on working. A refused key or model closes the connection (3000/4000),
    and that is what decides."""
    c = configured()
    assert server(c, error(code)) == []
    assert c.state is State.READY and c.fatal_reason is None


def test_session_expired_reconnects() -> None:
    c = configured()
    assert server(c, error("session_expired", message="60 minutes")) == [
        Reconnect("session expired")]
    assert c.state is State.READY
    assert c.conversation_id == "conv-1"


# ----------------------------------------------------- regressions (were bugs)


def test_interrupting_a_reply_whose_transcript_already_arrived() -> None:
    # the server streams faster than real time: the whole reply, its transcript and
    # response.done are usually here long before playback ends
    c = configured()
    speaking(c, samples(500))
    assert server(c, audio_done()) == []
    assert server(c, said("Sunny and warm all week.")) == [draft("Sunny and warm all week.")]
    assert server(c, done()) == []
    c.on_press(1.0)
    assert fx(c) == [StopPlayback(), MicOpened()]
    c.on_playback_stopped(1.0, {"item_a": samples(100)})
    assert fx(c) == [truncate("item_a", 100),
                     assistant("Sunny and warm all week.", interrupted=True, heard_ms=100),
                     show(State.LISTENING)]


def test_interrupting_the_second_item_leaves_the_fully_played_first_alone() -> None:
    c = configured()
    assert server(c, created()) == [show(State.THINKING)]
    server(c, delta(samples(100), item="item_a"))
    assert server(c, audio_done(item="item_a")) == []  # still queued: not finished
    assert server(c, delta(samples(200), item="item_b")) == [Play(pcm(samples(200)),
                                                                  "item_b")]
    c.on_press(1.0)
    assert fx(c) == [cancel(), StopPlayback(), MicOpened()]
    # item_a has left the sink's queue entirely (FileSpeaker.stop reports queued items)
    c.on_playback_stopped(1.0, {"item_b": samples(50)})
    assert fx(c) == [truncate("item_b", 50), show(State.LISTENING)]


def test_reply_cut_by_long_press_stays_in_its_conversation() -> None:
    c = configured()
    speaking(c, samples(500))
    c.on_long_press(1.0)
    assert fx(c) == [cancel(), StopPlayback(), Reconnect("new conversation")]
    c.on_playback_stopped(1.0, {"item_a": samples(100)})
    assert fx(c) == [truncate("item_a", 100), show(State.READY)]
    # the old socket is still delivering what was in flight before it closes
    assert server(c, said("Goodbye for now.")) == [
        assistant("Goodbye for now.", interrupted=True, heard_ms=100,
                  conversation_id="conv-1")]


# ------------------------------------------------------------------ re-seeding


def reseed(c: Conversation) -> list[dict[str, Any]]:
    """Reconnect; return the conversation.item.create events sent to the new session."""
    c.on_connection_down("session expired")
    c.on_connection_up()
    c.take_effects()
    sent = [e.event for e in server(c, wire.SessionCreated("s2", EXPIRES + 3600))
            if isinstance(e, Send)]
    assert sent[0]["type"] == "session.update"
    server(c, wire.SessionUpdated(session={}))
    return [dict(e) for e in sent[1:]]


def text_of(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in events]


def test_a_new_session_of_the_same_conversation_is_reseeded_with_the_last_turns() -> None:
    c = configured(reseed_turns=3)
    assert reseed(c) == []  # nothing said yet: nothing to re-seed
    for i in range(3):
        server(c, heard(f"question {i}", item=f"item_u{i}"))
        speaking(c, samples(100), item=f"item_a{i}", resp="resp_1")
        server(c, audio_done(item=f"item_a{i}"))
        server(c, said(f"answer {i}", item=f"item_a{i}"))
        c.on_playback_drained(float(i))
        server(c, done())
        fx(c)
    events = reseed(c)
    assert text_of(events) == [("assistant", "answer 1"), ("user", "question 2"),
                               ("assistant", "answer 2")]  # the last three turns
    assert [e["item"]["content"][0]["type"] for e in events] == [
        "output_text", "input_text", "output_text"]


def test_a_long_press_forgets_the_history_and_a_cut_reply_stays_with_its_own() -> None:
    c = configured()
    server(c, heard("old question"))
    speaking(c, samples(500))
    c.on_long_press(1.0)
    c.on_playback_stopped(1.0, {"item_a": samples(100)})
    server(c, said("old answer"))  # recorded under the old conversation
    fx(c)
    assert reseed(c) == []  # the new conversation starts with no context


# ------------------------------------------------------------------ session rollover


def standby_ready(c: Conversation, now: float = 0.0) -> list[Effect]:
    """The standby connection opens and is configured; return what that produced."""
    c.on_standby_up()
    out = plain([*c.take_effects()])
    c.on_standby_event(wire.SessionCreated("s2", EXPIRES + 3600), now)
    out += fx(c)
    c.on_standby_event(wire.SessionUpdated(session={}), now)
    return out + fx(c)


def reply_ends(c: Conversation, text: str, now: float) -> None:
    """The speaking reply's audio and words are all here, it plays out, its response ends."""
    server(c, audio_done())
    server(c, said(text))
    c.on_playback_drained(now)
    server(c, done())
    fx(c)


def test_rollover_prepares_the_next_session_then_switches_at_a_quiet_moment() -> None:
    c = configured(rollover_margin_s=300)  # the session expires at EXPIRES
    server(c, heard("what time is it"))
    c.on_tick(0.0, EXPIRES - 301)
    assert fx(c) == []  # not yet inside the margin
    speaking(c)
    c.on_tick(1.0, EXPIRES - 299)
    assert fx(c) == [OpenStandby()]  # prepared while the assistant talks
    assert c.standby == "opening"
    c.on_tick(1.5, EXPIRES - 298)
    assert fx(c) == []  # asked once
    update, seed = standby_ready(c)
    assert isinstance(update, Send) and update.standby
    assert update.event["type"] == "session.update"
    assert isinstance(seed, Send) and seed.standby
    assert text_of([dict(seed.event)]) == [("user", "what time is it")]
    assert c.standby == "ready"
    c.on_tick(2.0, EXPIRES - 297)
    assert fx(c) == []  # still speaking: no switch
    reply_ends(c, "It is noon.", 3.0)
    c.on_tick(4.0, EXPIRES - 290)
    effects = fx(c)
    # the switch re-seeds the turn that ended after the standby was seeded, and replays
    # no audio (the mic is off)
    assert effects[0] == SwitchToStandby()
    assert [(e.event["type"], e.standby) for e in effects[1:]
            if isinstance(e, Send)] == [("conversation.item.create", False)]
    assert effects[1].event["item"]["content"][0]["text"] == "It is noon."  # type: ignore
    assert c.expires_at == EXPIRES + 3600 and c.standby is None and c.connected
    assert c.state == State.READY  # the user saw nothing of it


def test_rollover_is_forced_in_the_last_fifth_and_replays_the_unfinished_turn() -> None:
    c = configured(rollover_margin_s=300)
    c.on_press(0.0)
    server(c, wire.SpeechStarted(item_id="item_u", audio_start_ms=0))
    c.on_audio_captured(pcm(samples(200)), 0.0)  # the user is mid-sentence
    fx(c)
    c.on_tick(1.0, EXPIRES - 100)
    assert fx(c) == [OpenStandby()]
    standby_ready(c)
    c.on_tick(2.0, EXPIRES - 61)
    assert fx(c) == []  # waiting for the user to finish
    c.on_tick(3.0, EXPIRES - 59)
    effects = fx(c)
    assert effects[0] == SwitchToStandby()
    assert effects[1:] == [send("input_audio_buffer.append",
                                audio=base64.b64encode(pcm(samples(200))).decode())]


def test_rollover_waits_for_the_users_words_to_be_transcribed() -> None:
    """Transcription of a turn may come after the reply to it. Switching before it came
    would leave the words in the old session: no record, and missing from the context."""
    c = configured(rollover_margin_s=300)
    server(c, wire.BufferCommitted(item_id="item_u"))
    speaking(c, samples(100))
    c.on_tick(0.0, EXPIRES - 299)
    assert fx(c) == [OpenStandby()]
    standby_ready(c)
    assert c.standby == "ready"  # the reply is playing: not yet
    reply_ends(c, "It is noon.", 1.0)
    c.on_tick(2.0, EXPIRES - 290)
    assert fx(c) == []  # quiet, but the question is not transcribed yet
    assert server(c, heard("what time is it")) == [user("what time is it")]
    c.on_tick(3.0, EXPIRES - 289)
    effects = fx(c)
    assert effects[0] == SwitchToStandby()
    assert ("user", "what time is it") in text_of(
        [dict(e.event) for e in effects if isinstance(e, Send)])  # in the new context


def test_a_forced_switch_forgets_a_reply_that_waited_for_a_cancelled_one() -> None:
    """Push to talk over a reply; the turn's response.create waits for the cancelled reply
    to end, and a forced switch comes first. The new session never got that turn: closing
    the old reply must not ask it for an answer."""
    c = configured(push_to_talk=True, rollover_margin_s=300)
    speaking(c)
    c.on_tick(0.0, EXPIRES - 100)
    fx(c)
    standby_ready(c)
    c.on_talk_start(1.0)
    c.on_playback_stopped(1.0, {})
    c.on_audio_captured(pcm(samples(300)), 1.5)
    c.on_talk_end(1.8)
    assert [e for e in fx(c) if isinstance(e, Send)][-1] == COMMIT  # create waits
    c.on_tick(2.0, EXPIRES - 59)  # forced, before the cancelled reply's response.done
    effects = fx(c)
    assert SwitchToStandby() in effects and CREATE not in effects


def test_a_quiet_switch_replays_only_the_newest_half_second() -> None:
    c = configured(rollover_margin_s=300)
    c.on_press(0.0)
    for _ in range(20):  # two seconds of room noise the server VAD ignored
        c.on_audio_captured(pcm(samples(100)), 0.0)
    fx(c)
    c.on_tick(1.0, EXPIRES - 200)
    fx(c)
    effects = standby_ready(c)
    assert SwitchToStandby() in effects  # quiet already: it switches as soon as ready
    sent = c.counters.appended_samples
    assert sent == samples(2000) + samples(500)  # a word just begun is not lost


def test_a_standby_that_fails_is_tried_again_later() -> None:
    c = configured(rollover_margin_s=300)
    c.on_tick(0.0, EXPIRES - 200)
    assert fx(c) == [OpenStandby()]
    c.on_standby_down("connection refused", 0.0)
    c.on_standby_down("again", 0.0)  # once is enough
    c.on_tick(5.0, EXPIRES - 195)
    assert fx(c) == []
    c.on_tick(10.0, EXPIRES - 190)
    assert fx(c) == [OpenStandby()]
    c.on_standby_up()
    c.on_standby_event(wire.SessionCreated("s2", EXPIRES + 3600), 10.0)
    fx(c)
    c.on_standby_event(error("invalid_api_key"), 10.0)
    assert fx(c) == [CloseStandby("refused: invalid_api_key")]
    assert c.standby is None
    c.on_standby_event(wire.SessionUpdated(session={}), 11.0)
    assert fx(c) == []  # events from a standby already given up are ignored


def test_the_live_session_ending_closes_the_standby() -> None:
    c = configured(rollover_margin_s=300)
    c.on_tick(0.0, EXPIRES - 200)
    fx(c)
    c.on_standby_up()
    c.on_connection_down("server closed 1006")
    assert CloseStandby("the live session ended") in fx(c)
    assert c.standby is None


def test_session_expired_switches_at_once_to_a_ready_standby() -> None:
    c = configured(rollover_margin_s=300)
    c.on_tick(0.0, EXPIRES - 250)
    fx(c)
    c.on_tick(1.0, EXPIRES - 249)
    server(c, created())  # busy: the switch waits
    standby_ready(c)
    assert c.standby == "ready"
    c.on_standby_event(wire.Unhandled(type="conversation.item.added", raw={}), 1.0)  # ignored
    effects = server(c, error("session_expired"))
    assert effects[0] == SwitchToStandby() and Reconnect("session expired") not in effects
    assert c.expires_at == EXPIRES + 3600


def test_no_rollover_without_an_expiry_or_a_session() -> None:
    c = fresh()
    c.on_tick(0.0, EXPIRES)
    assert fx(c) == []
    c = configured()
    c.on_connection_down("gone")
    fx(c)
    c.on_tick(0.0, EXPIRES)
    assert fx(c) == []


# ------------------------------------------------------------------ drafts


def test_a_transcript_known_before_playback_ends_is_drafted_once() -> None:
    c = configured()
    speaking(c, samples(500))
    effects = c.take_effects()
    c.on_server_event(said("Sunny and warm."), 0.0)
    c.on_server_event(done(transcripts={"item_a": "Sunny and warm."}), 0.0)
    effects = c.take_effects()
    drafts = [e for e in effects if isinstance(e, Draft)]
    assert len(drafts) == 1  # once, though response.done repeated the transcript
    t = drafts[0].transcript
    assert (t.role, t.text, t.item_id) == ("assistant", "Sunny and warm.", "item_a")
    assert t.metadata["heard_ms"] is None and t.metadata["interrupted"] is None
    c.on_playback_drained(1.0)
    assert fx(c) == [assistant("Sunny and warm.", heard_ms=500), show(State.READY)]


def test_no_draft_when_playback_already_ended() -> None:
    c = configured()
    speaking(c, samples(100))
    server(c, audio_done())
    c.on_playback_drained(1.0)
    c.take_effects()
    effects = c.take_effects() + (c.on_server_event(said("Hi."), 1.0) or c.take_effects())
    assert not any(isinstance(e, Draft) for e in effects)
