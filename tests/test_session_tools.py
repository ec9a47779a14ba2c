"""The conversation core's tool calls and on-device turn detection, input by input."""

from __future__ import annotations

import json
from typing import Any

from tests.test_session import (
    CLEAR,
    COMMIT,
    CREATE,
    append,
    cancel,
    configured,
    created,
    delta,
    done,
    fx,
    samples,
    send,
    server,
    show,
    speaking,
)
from voiced import wire
from voiced.core.effects import (
    CallTool,
    CancelTool,
    Reconnect,
    State,
    StopPlayback,
    SwitchToStandby,
)

TOOL: wire.FunctionToolParam = {"type": "function", "name": "get_time",
                                "description": "the time", "parameters": {"type": "object"}}
CANCELLED = '{"error": "cancelled: the user interrupted before it finished"}'


def call(call_id: str = "call_1", name: str = "get_time", resp: str = "resp_1",
         args: str = "{}") -> wire.FunctionCallDone:
    return wire.FunctionCallDone(response_id=resp, item_id=f"item_{call_id}", call_id=call_id,
                                 name=name, arguments=args)


def output(call_id: str, text: str) -> Any:
    return send("conversation.item.create",
                item={"type": "function_call_output", "call_id": call_id, "output": text})


def test_tools_are_declared_in_the_session_update() -> None:
    c = configured(tools=(TOOL,))
    c.on_connection_down("x")
    c.on_connection_up()
    c.take_effects()
    update = server(c, wire.SessionCreated("s2", None))[0]
    assert update.event["session"]["tools"] == [TOOL]  # type: ignore[union-attr]
    assert update.event["session"]["tool_choice"] == "auto"  # type: ignore[union-attr]
    assert "tools" not in configured().status()  # no tools: nothing declared


def test_several_calls_are_run_and_answered_with_one_response_create() -> None:
    c = configured(tools=(TOOL,))
    assert server(c, created()) == [show(State.THINKING)]
    assert server(c, call("call_1", args='{"a": 1}')) == [
        CallTool("call_1", "get_time", '{"a": 1}'), show(State.THINKING,
                                                          "running get_time")]
    assert server(c, call("call_1")) == []  # output_item.done repeats it: deduped
    assert server(c, call("call_2", name="weather")) == [
        CallTool("call_2", "weather", "{}"),
        show(State.THINKING, "running get_time, weather")]
    c.on_tool_result("call_2", '{"sky": "clear"}', 0.0)
    assert fx(c) == [output("call_2", '{"sky": "clear"}'),
                     show(State.THINKING, "running get_time")]
    c.on_tool_result("call_1", '{"time": "12:00"}', 0.0)
    # the response that made the calls is still active: no response.create yet
    assert fx(c) == [output("call_1", '{"time": "12:00"}'), show(State.THINKING)]
    assert server(c, done()) == [CREATE]
    assert c.state == State.THINKING
    assert c.counters.tool_calls == 2


def test_a_result_after_response_done_asks_at_once_and_a_late_one_is_ignored() -> None:
    c = configured(tools=(TOOL,))
    server(c, created())
    server(c, call())
    server(c, done())
    assert c.state == State.THINKING  # the tool still runs after the response ended
    c.on_tool_result("call_1", "{}", 0.0)
    assert fx(c) == [output("call_1", "{}"), CREATE, show(State.THINKING)]
    c.on_tool_result("call_1", "{}", 0.0)
    assert fx(c) == []


def test_user_speech_cancels_running_calls_and_answers_them_as_cancelled() -> None:
    c = configured(tools=(TOOL,))
    server(c, created())
    server(c, call())
    server(c, done())
    effects = server(c, wire.SpeechStarted(item_id="item_u2", audio_start_ms=0))
    assert effects[:2] == [CancelTool("call_1"), output("call_1", CANCELLED)]
    assert c.counters.tool_calls_cancelled == 1
    c.on_tool_result("call_1", '{"late": true}', 1.0)
    assert fx(c) == []  # the cancelled call's result goes nowhere


def test_an_incomplete_call_from_a_response_the_server_cancelled_is_not_run() -> None:
    """The user spoke while the model was still writing a call: the server cancels the
    response and reports the call item incomplete, arguments cut short. Running it could
    end the conversation or mute the mic on half an intent."""
    c = configured(tools=(TOOL,))
    server(c, created())
    server(c, wire.SpeechStarted(item_id="item_u2", audio_start_ms=0))
    cut = wire.parse_server_event(json.dumps({
        "type": "response.output_item.done", "event_id": "e1", "response_id": "resp_1",
        "output_index": 0, "item": {"id": "item_call_1", "type": "function_call",
                                    "status": "incomplete", "call_id": "call_1",
                                    "name": "end_conversation", "arguments": '{"rea'}}))
    assert isinstance(cut, wire.FunctionCallDone) and not cut.complete
    assert server(c, cut) == [output("call_1", CANCELLED)]  # answered, not run
    assert server(c, done(status="cancelled", reason="turn_detected")) == [
        show(State.READY)]  # no response.create for it
    assert c.counters.tool_calls == 0


def test_a_press_during_a_tool_call_cancels_it_and_opens_the_mic() -> None:
    c = configured(tools=(TOOL,))
    server(c, created())
    server(c, call())
    c.on_press(0.0)
    effects = fx(c)
    assert effects[:4] == [CancelTool("call_1"), output("call_1", CANCELLED), cancel(),
                           StopPlayback()]
    assert c.mic_on
    # a call the interrupted response still reports is answered, never run
    assert server(c, call("call_9")) == [output("call_9", CANCELLED)]


def test_a_dropped_connection_cancels_calls_without_sending() -> None:
    c = configured(tools=(TOOL,))
    server(c, created())
    server(c, call())
    c.on_connection_down("server closed 1006")
    effects = fx(c)
    assert CancelTool("call_1") in effects
    assert not any(getattr(e, "event", None) for e in effects)


def test_mute_and_end_conversation_tools() -> None:
    c = configured(tools=(TOOL,))
    c.on_press(0.0)
    fx(c)
    c.mute_mic()
    assert not c.mic_on and fx(c) == [show(State.READY)]
    server(c, created())
    server(c, call())
    c.end_conversation()
    c.on_tool_result("call_1", "{}", 0.0)
    fx(c)
    assert server(c, done()) == [CREATE]
    server(c, created("resp_2"))
    server(c, delta(resp="resp_2"))
    server(c, wire.AudioDone(response_id="resp_2", item_id="item_a"))
    server(c, done("resp_2", transcripts={"item_a": "Goodbye!"}))
    c.on_playback_drained(2.0)
    effects = fx(c)
    assert Reconnect("new conversation") in effects  # only once the goodbye was heard
    assert c.conversation_id == "conv-2"


# ------------------------------------------------------------------ client VAD


def vad(**kw: Any) -> Any:
    from voiced.core.speech_gate import ClientVad

    c = configured(turn_type="client_vad",
                   client_vad=ClientVad(pre_roll_ms=100, tail_ms=100, silence_ms=300,
                                        min_speech_ms=40), **kw)
    c.on_press(0.0)
    fx(c)
    return c


def frames(c: Any, pattern: str, t0: float = 0.0) -> list[Any]:
    """Feed 20 ms frames: 's' speech, '.' silence; each frame's bytes say its index."""
    out = []
    for i, ch in enumerate(pattern):
        c.on_audio_captured(bytes([i % 256, 0]) * samples(20), t0 + i * 0.02, ch == "s")
        out += fx(c)
    return out


def test_client_vad_sends_speech_with_pre_roll_and_tail_and_commits_once() -> None:
    c = vad()
    assert c.policy.turn_detection is None  # the session gets turn_detection: null
    effects = frames(c, "......" + "ssssss" + "..........." + "....")
    sent = [e.event["audio"] for e in effects if getattr(e, "event", {}).get(
        "type") == "input_audio_buffer.append"]  # type: ignore[union-attr]
    # pre-roll 100 ms + min speech 40 ms before the trigger = frames 1..7 at the trigger
    # (7 = 140 ms), then the rest of the speech (4) and 100 ms of tail (5)
    first = [append(bytes([i, 0]) * samples(20)).event["audio"]  # type: ignore[index]
             for i in range(1, 17)]
    assert sent == first
    types = [e.event["type"] for e in effects if hasattr(e, "event")]  # type: ignore[union-attr]
    assert types.count("input_audio_buffer.commit") == 1
    assert types[-2:] == ["input_audio_buffer.commit", "response.create"]
    assert c.counters.vad_turns == 1
    assert c.counters.vad_samples_held_back == samples(20) * (27 - 16)


def test_client_vad_ignores_clicks_and_short_noise() -> None:
    c = vad()
    effects = frames(c, "..s...s..s....")
    assert effects == []
    assert c.counters.appended_samples == 0


def test_client_vad_speech_resuming_in_the_pause_stays_one_turn() -> None:
    c = vad()
    effects = frames(c, "sss" + "........" + "sss" + "................")
    types = [e.event["type"] for e in effects if hasattr(e, "event")]  # type: ignore[union-attr]
    assert types.count("input_audio_buffer.commit") == 1


def test_client_vad_barge_in_in_full_duplex_interrupts_and_waits_for_the_cancel() -> None:
    c = vad(half_duplex=False)
    speaking(c)  # the mic is on, full duplex: the user can talk over the reply
    effects = frames(c, "sss", 1.0)
    assert cancel() in effects and StopPlayback() in effects
    c.on_playback_stopped(1.1, {"item_a": samples(100)})
    fx(c)
    effects = frames(c, "s" + "................", 1.2)
    types = [e.event["type"] for e in effects if hasattr(e, "event")]  # type: ignore[union-attr]
    assert "input_audio_buffer.commit" in types
    assert "response.create" not in types  # the cancelled response has not ended yet
    assert server(c, done(status="cancelled")) == [CREATE]


def test_client_vad_switching_the_mic_off_mid_turn_commits_it() -> None:
    c = vad()
    frames(c, "..ssss")
    c.on_press(1.0)
    assert [e for e in fx(c) if e in (COMMIT, CREATE, CLEAR)] == [COMMIT, CREATE]
    assert c.status()["mic"] == "off"


def test_switching_client_vad_off_mid_turn_ends_the_turn() -> None:
    from tests.test_session import policy

    c = vad()
    frames(c, "..ssss")
    c.set_policy(policy(turn_type="server_vad"))
    assert [e for e in fx(c) if e in (COMMIT, CREATE, CLEAR)] == [COMMIT, CREATE]
    assert c.policy.client_vad is None


def test_client_vad_turn_spoken_while_disconnected_is_committed_on_reconnect() -> None:
    c = vad()
    c.on_connection_down("server closed 1006")
    fx(c)
    frames(c, "..ssssss" + "................")  # a whole utterance while away
    assert c.counters.vad_turns == 0
    c.on_connection_up()
    c.take_effects()
    server(c, wire.SessionCreated("s2", None))
    effects = server(c, wire.SessionUpdated(session={}))
    types = [e.event["type"] for e in effects if hasattr(e, "event")]  # type: ignore[union-attr]
    assert types.count("input_audio_buffer.append") >= 8
    assert types[-2:] == ["input_audio_buffer.commit", "response.create"]


def test_a_forced_rollover_cancels_running_calls_in_the_old_session() -> None:
    """No quiet moment came: the switch is forced while a tool runs. The call is cancelled
    and answered in the session that knows its call id, before the switch; its late result
    goes nowhere (the new session has never seen that call)."""
    from tests.test_session import EXPIRES, standby_ready
    c = configured(tools=(TOOL,), rollover_margin_s=300)
    server(c, created())
    server(c, call())
    server(c, done())
    c.on_tick(1.0, EXPIRES - 100)
    fx(c)
    standby_ready(c)
    c.on_tick(2.0, EXPIRES - 59)  # the last fifth of the margin
    effects = fx(c)
    assert effects[:3] == [CancelTool("call_1"), output("call_1", CANCELLED),
                           SwitchToStandby()]
    c.on_tool_result("call_1", '{"time": "12:00"}', 3.0)
    assert fx(c) == []

