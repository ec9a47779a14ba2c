"""The GPT-Live core, driven synchronously input by input (as tests/test_session.py).

Every step asserts the whole effect list. Sends are compared without their ``event_id``
(each is checked to have one, and appends to have none); time is injected.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.live_types import strict_client_event
from voiced.core.effects import (
    CallTool,
    CancelTool,
    Draft,
    MicOpened,
    Play,
    Reconnect,
    Record,
    Send,
    ShowState,
    State,
    StopPlayback,
)
from voiced.live import wire as lw
from voiced.live.core import Disconnect, LiveConversation, LiveSettings
from voiced.transcripts import Transcript

FRAME = bytes(range(256)) * 3 + bytes(192)  # 20 ms of "speech" (960 bytes, not silent)
ZERO = bytes(960)
LOUD = (b"\x00\x10" * 2400)  # 100 ms of output audio, well above the floor
QUIET = bytes(4800)  # 100 ms of digital silence
SID = "live_1"
EXPIRES = 1_800_003_600.0


def show(state: State, detail: str | None = None) -> ShowState:
    return ShowState(state, detail or str(state))


def new_ids() -> Callable[[], str]:
    counter = itertools.count(2)
    return lambda: f"conv-{next(counter)}"


def fresh(**kw: Any) -> LiveConversation:
    return LiveConversation(LiveSettings(**{"instructions": "Be brief.", **kw}),
                            conversation_id="conv-1", new_id=new_ids(), rand=lambda: 1.0)


def plain(effects: list[Any]) -> list[Any]:
    """Effects with each Send's event checked (valid Live, an event_id unless an
    append) and compared without its event_id."""
    out: list[Any] = []
    for e in effects:
        if isinstance(e, Send):
            event = dict(e.event)
            strict_client_event(lw.encode(e.event))  # type: ignore[arg-type]
            if event["type"] == "session.input_audio.append":
                assert "event_id" not in event
            else:
                assert isinstance(event.pop("event_id"), str)
            out.append(Send(event))  # type: ignore[arg-type]
        else:
            out.append(e)
    return out


def fx(c: LiveConversation) -> list[Any]:
    return plain(c.take_effects())


def sent(event: Any) -> Send:
    event = dict(event)
    event.pop("event_id", None)
    return Send(event)


def append(pcm: bytes) -> Send:
    return Send(lw.audio_append(pcm))  # type: ignore[arg-type]


def server(c: LiveConversation, ev: lw.ServerEvent, now: float = 0.0) -> list[Any]:
    c.on_server_event(ev, now)
    return fx(c)


def started(ev_id: str = "s1") -> lw.SessionStarted:
    return lw.SessionStarted(SID, EXPIRES, "gpt-live-1", ev_id)


def open_session(**kw: Any) -> LiveConversation:
    """Devices ready, the user pressed, the session started; effects drained."""
    c = fresh(**kw)
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_up(0.0)
    c.take_effects()
    assert server(c, started()) == [show(State.LISTENING)]
    return c


def user(c: LiveConversation, text: str, start: int, end: int, eid: str | None = None,
         now: float = 0.0) -> list[Any]:
    return server(c, lw.TranscriptDelta("user", eid or f"u{start}", text, start, end), now)


def said(c: LiveConversation, text: str, start: int, end: int, eid: str | None = None,
         now: float = 0.0) -> list[Any]:
    return server(c, lw.TranscriptDelta("assistant", eid or f"a{start}", text, start, end),
                  now)


def frames(c: LiveConversation, n: int, pcm: bytes = FRAME, now: float = 0.0) -> list[Any]:
    """``n`` mic frames (20 ms each)."""
    out: list[Any] = []
    for _ in range(n):
        c.on_mic_frame(pcm, now)
        out += fx(c)
    return out


def output(c: LiveConversation, *chunks: bytes, now: float = 0.0) -> list[Any]:
    out: list[Any] = []
    for pcm in chunks:
        out += server(c, lw.OutputAudio(pcm), now)
    return out


def record(role: str, text: str, start: int, end: int, conversation: str = "conv-1",
           **extra: Any) -> Record:
    item = f"{SID}/{role}/{start}"
    base = {"api": "live", "model": "gpt-live-1", "item_id": item, "session_id": SID,
            "start_ms": start, "end_ms": end}
    meta = ({"input_method": "realtime_voice", **base} if role == "user" else
            {"voice": "marin", **base, "response_id": None, **extra})
    return Record(Transcript(role=role, text=text, item_id=item,
                             conversation_id=conversation, metadata=meta))


def start_event(c: LiveConversation, **session: Any) -> Send:
    body: dict[str, Any] = {
        "model": "gpt-live-1", "instructions": c.instructions(),
        "audio": {"format": {"type": "audio/pcm", "rate": 24000},
                  "output": {"voice": "marin"}},
        "delegation": {"type": "client", "acknowledgement_delay_ms": 600}, **session}
    return Send({"type": "session.start", "session": body})  # type: ignore[typeddict-item]


# ------------------------------------------------------------------ sessions open on demand


def test_an_idle_device_opens_nothing_until_the_user_talks() -> None:
    c = fresh()
    c.on_devices_ready()
    assert fx(c) == [show(State.READY)]
    assert frames(c, 50) == []  # mic frames while idle go nowhere
    c.on_tick(30.0, EXPIRES)
    c.on_tick(3600.0, EXPIRES)
    assert fx(c) == []
    assert c.phase == "idle" and c.status()["billed_minutes"] == 0


def test_a_press_opens_a_session_and_audio_waits_for_session_started() -> None:
    c = fresh()
    c.on_devices_ready()
    c.take_effects()
    c.on_press(1.0)
    assert fx(c) == [MicOpened(), Reconnect("the user started talking"),
                     show(State.CONNECTING, "opening a Live session")]
    assert frames(c, 3) == []  # the first words, kept while the session starts
    c.on_connection_up(1.2)
    assert fx(c) == [start_event(c), show(State.CONNECTING, "starting the Live session")]
    assert frames(c, 2, ZERO) == []
    assert server(c, started(), 1.5) == [append(FRAME)] * 3 + [append(ZERO)] * 2 + [
        show(State.LISTENING)]
    assert frames(c, 1) == [append(FRAME)]
    assert c.session_id == SID and c.expires_at == EXPIRES and c.connected


def test_the_words_said_while_starting_are_bounded() -> None:
    c = fresh(prestart_ms=100)  # five frames
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_up(0.0)
    c.take_effects()
    for i in range(10):
        c.on_mic_frame(bytes([i + 1]) * 960, 0.0)
    assert fx(c) == []
    assert server(c, started()) == [append(bytes([i + 1]) * 960) for i in range(5, 10)] + [
        show(State.LISTENING)]
    assert c.counters.prestart_dropped == 5
    c = fresh(prestart_ms=0)
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_up(0.0)
    frames(c, 10)
    c.take_effects()
    assert server(c, started()) == [show(State.LISTENING)]


def test_session_start_carries_settings_and_the_delegation_policy() -> None:
    tools = ({"type": "function", "name": "get_time", "description": "The time.",
              "parameters": {"type": "object", "properties": {}}},)
    c = fresh(model="gpt-live-1.1", voice="cedar", ack_delay_ms=400, tools=tools,
              safety_identifier="kitchen")
    assert c.instructions() == (
        "Be brief.\n\nDelegation policy: this device can do the following itself. When "
        "the user asks for one of them, delegate the task to the app and speak its answer "
        "in your own words; never guess the result.\n- get_time: The time.\nDelegate: "
        "time, what time, date, what day, clock, today s date")
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_up(0.0)
    start = next(e for e in c.take_effects() if isinstance(e, Send)).event
    assert start == {"type": "session.start", "event_id": "voiced_1", "session": {
        "model": "gpt-live-1.1", "instructions": c.instructions(),
        "audio": {"format": {"type": "audio/pcm", "rate": 24000},
                  "output": {"voice": "cedar"}},
        "delegation": {"type": "client", "acknowledgement_delay_ms": 400},
        "safety_identifier": "kitchen"}}
    assert fresh(tools=tools, delegation_policy=False).instructions() == "Be brief."


# ------------------------------------------------------------------ the mic and the button


def test_the_mic_streams_every_frame_and_silence_while_off() -> None:
    c = open_session()
    assert frames(c, 2) == [append(FRAME)] * 2
    c.on_press(1.0)  # mic off: mute, and silence from now on; the state waits for the ack
    assert fx(c) == [Send({"type": "session.input_audio.mute"})]  # type: ignore[typeddict-item]
    assert frames(c, 2) == [append(ZERO)] * 2
    assert server(c, lw.InputMuted(True, "voiced_2")) == [show(State.READY)]
    c.on_press(2.0)
    assert fx(c) == [MicOpened(), Send({"type": "session.input_audio.unmute"})]  # type: ignore[typeddict-item]
    assert frames(c, 1) == [append(FRAME)]
    assert server(c, lw.InputMuted(False, "voiced_3")) == [show(State.LISTENING)]
    assert c.counters.audio_sent_ms == 60 and c.counters.silence_sent_ms == 40


def test_push_to_talk_mutes_on_release() -> None:
    c = open_session()
    c.on_talk_end(1.0)
    assert fx(c) == [Send({"type": "session.input_audio.mute"})]  # type: ignore[typeddict-item]
    assert server(c, lw.InputMuted(True, None)) == [show(State.READY)]
    c.on_talk_start(2.0)
    assert fx(c) == [MicOpened(), Send({"type": "session.input_audio.unmute"})]  # type: ignore[typeddict-item]


def test_a_session_that_starts_with_the_mic_off_is_muted_at_once() -> None:
    c = fresh()
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_press(0.1)  # on, then off again before the session started
    c.on_connection_up(0.2)
    c.take_effects()
    assert server(c, started()) == [Send({"type": "session.input_audio.mute"}),  # type: ignore[typeddict-item]
                                    show(State.LISTENING)]
    assert server(c, lw.InputMuted(True, None)) == [show(State.READY)]
    assert frames(c, 1) == [append(ZERO)]


# ------------------------------------------------------------------ reply audio


def test_reply_audio_plays_in_bursts_and_silence_between_is_dropped() -> None:
    c = open_session()
    assert output(c, QUIET, QUIET) == []  # the track's silence is not played
    assert output(c, LOUD) == [Play(LOUD, f"{SID}@200"), show(State.SPEAKING)]
    # a pause inside the reply keeps its length; 500 ms of silence end the burst
    assert output(c, QUIET, LOUD) == [Play(QUIET, f"{SID}@200"), Play(LOUD, f"{SID}@200")]
    assert output(c, *[QUIET] * 5) == [Play(QUIET, f"{SID}@200")] * 5
    assert output(c, QUIET) == []
    c.on_playback_drained(1.0)
    assert fx(c) == [show(State.LISTENING)]
    assert output(c, LOUD) == [Play(LOUD, f"{SID}@1100"), show(State.SPEAKING)]


def test_a_faint_track_is_silence_and_a_device_fault_drops_audio() -> None:
    c = open_session()
    faint = b"\x05\x00\xfb\xff" * 1200  # RMS 5: below the floor
    assert output(c, faint) == []
    c.on_device_fault("the speaker is gone")
    assert fx(c) == [show(State.ERROR, "the speaker is gone")]
    assert output(c, LOUD) == []
    assert c.counters.output_dropped == 1


def test_half_duplex_sends_silence_while_the_assistant_speaks_and_after() -> None:
    c = open_session(echo_tail_ms=300)
    output(c, LOUD)
    assert frames(c, 1, now=1.0) == [append(ZERO)]
    output(c, *[QUIET] * 5)
    c.on_playback_drained(2.0)
    assert fx(c) == [show(State.LISTENING)]
    assert frames(c, 1, now=2.2) == [append(ZERO)]  # the echo tail
    assert frames(c, 1, now=2.3) == [append(FRAME)]
    c = open_session(half_duplex=False)
    output(c, LOUD)
    assert frames(c, 1) == [append(FRAME)]


def test_a_press_while_speaking_stops_playback_and_drops_the_rest() -> None:
    c = open_session()
    output(c, LOUD, LOUD, LOUD)
    c.on_press(1.0)
    assert fx(c) == [StopPlayback(), show(State.LISTENING)]
    # the model does not know: what it goes on saying is dropped
    assert output(c, LOUD, QUIET, LOUD) == []
    c.on_playback_stopped(1.1, {f"{SID}@0": 3600})
    assert fx(c) == [Send({  # type: ignore[typeddict-item]
        "type": "session.thinking.append", "content": "The user pressed the stop button "
        "while you were speaking and did not hear the rest of that reply. Do not go on "
        "with it unless they ask.", "delegation_id": None})]
    assert output(c, *[QUIET] * 10) == []  # a second of silence ends the hold
    assert output(c, LOUD) == [Play(LOUD, f"{SID}@1600"), show(State.SPEAKING)]
    assert c.counters.interruptions == 1 and c.mic_on


def test_ctl_interrupt_and_a_press_that_switches_the_mic_back_on() -> None:
    c = open_session(tell_model_on_interrupt=False)
    c.on_press(0.5)
    server(c, lw.InputMuted(True, None))
    c.take_effects()
    output(c, LOUD)
    c.on_interrupt(1.0)
    assert fx(c) == [StopPlayback(), show(State.READY)]
    c.on_playback_stopped(1.0, {})
    assert fx(c) == []
    c.on_interrupt(1.1)  # nothing speaks: nothing to do
    assert fx(c) == []
    output(c, *[QUIET] * 10, LOUD)
    c.take_effects()
    c.on_press(2.0)  # speaking, mic off: stop and listen
    assert fx(c) == [StopPlayback(), MicOpened(),
                     Send({"type": "session.input_audio.unmute"}),  # type: ignore[typeddict-item]
                     show(State.READY)]


# ------------------------------------------------------------------ transcripts


def not_audio(effects: list[Any]) -> list[Any]:
    return [e for e in effects if not (isinstance(e, Send)
                                       and e.event["type"] == "session.input_audio.append")]


def test_fragments_become_records_with_stable_ids() -> None:
    c = open_session()
    assert user(c, "What's", 600, 800) == []
    assert user(c, " the time", 800, 1200, now=1.0) == []
    assert user(c, " the time", 800, 1200, eid="u800") == []  # the same fragment again
    output(c, *[QUIET] * 14)  # the track reaches 1400 ms
    # the assistant speaks after the user: the user's segment is complete
    assert said(c, "It's", 1400, 1600) == [record("user", "What's the time", 600, 1200)]
    assert said(c, " noon.", 1600, 1800) == []
    assert output(c, *[LOUD] * 4) == [Play(LOUD, f"{SID}@1400"), show(State.SPEAKING)] + [
        Play(LOUD, f"{SID}@1400")] * 3
    assert output(c, *[QUIET] * 5) == [Play(QUIET, f"{SID}@1400")] * 5
    # 2 s of timeline after its end the assistant's segment closes; its audio still plays
    assert not_audio(frames(c, 189)) == []
    assert not_audio(frames(c, 1)) == [Draft(Transcript(
        role="assistant", text="It's noon.", item_id=f"{SID}/assistant/1400",
        conversation_id="conv-1", metadata={
            "voice": "marin", "api": "live", "model": "gpt-live-1",
            "item_id": f"{SID}/assistant/1400", "session_id": SID, "start_ms": 1400,
            "end_ms": 1800, "response_id": None, "interrupted": None, "heard_ms": None}))]
    c.on_playback_drained(5.0)
    assert fx(c) == [record("assistant", "It's noon.", 1400, 1800, interrupted=False,
                            heard_ms=400), show(State.LISTENING)]
    # the ids: uuid5 of the device and <session>/<role>/<start_ms>, stable across replays
    from voiced.transcripts import record_id
    assert record_id("kitchen", f"{SID}/user/600") == record_id("kitchen", "live_1/user/600")
    assert record_id("kitchen", f"{SID}/user/600") != record_id("hall", f"{SID}/user/600")


def test_heard_ms_and_interrupted_come_from_the_played_position() -> None:
    c = open_session()
    user(c, "Tell me a story", 0, 1000)
    output(c, *[QUIET] * 12)  # the track reaches 1200 ms
    said(c, "Once upon a time", 1200, 2400)
    assert fx(c) == []
    output(c, *[LOUD] * 12)  # 1200..2400 ms of the track
    c.on_press(3.0)
    c.take_effects()
    c.on_playback_stopped(3.0, {f"{SID}@1200": 12_000})  # 500 ms of it played
    said(c, " there was a robot", 2400, 3000)  # the model goes on, unheard
    c.take_effects()
    effects = [e for e in frames(c, 300) if isinstance(e, Record)]  # 6 s: it closes
    assert effects == [record("assistant", "Once upon a time there was a robot", 1200, 3000,
                              interrupted=True, heard_ms=500)]


def test_talking_over_the_assistant_marks_its_record_interrupted() -> None:
    c = open_session(half_duplex=False)
    output(c, *[LOUD] * 10)
    said(c, "The weather today is", 0, 1000)
    assert user(c, "Stop", 800, 1000) == []  # starts before the assistant's end
    output(c, *[QUIET] * 6)
    c.on_playback_drained(2.0)
    c.take_effects()
    assert said(c, "Okay.", 2000, 2200) == [
        record("assistant", "The weather today is", 0, 1000, interrupted=True,
               heard_ms=1000),
        record("user", "Stop", 800, 1000)]


def test_records_of_an_ended_conversation_keep_its_id_and_leave_history_alone() -> None:
    c = open_session()
    user(c, "Remember tea", 0, 600)
    assert said(c, "Noted.", 800, 1000) == [record("user", "Remember tea", 0, 600)]
    c.on_long_press(2.0)
    assert fx(c) == [record("assistant", "Noted.", 800, 1000, interrupted=False,
                            heard_ms=0),
                     Send({"type": "session.close"}),  # type: ignore[typeddict-item]
                     show(State.READY)]
    assert c.conversation_id == "conv-2"
    assert said(c, " Anything else?", 1000, 1400) == []  # late words of the old session


# ------------------------------------------------------------------ quiet close and billing


def test_the_session_closes_after_the_quiet_time() -> None:
    c = open_session(quiet_close_s=30.0)
    user(c, "hello", 0, 400, now=5.0)
    server(c, lw.UsageUpdated(15.0, 0.01), 15.0)
    c.on_tick(34.9, EXPIRES)
    assert fx(c) == []
    c.on_tick(35.0, EXPIRES)
    assert fx(c) == [Send({"type": "session.close"}), show(State.READY)]  # type: ignore[typeddict-item]
    assert not c.mic_on and c.phase == "closing"
    assert frames(c, 1) == [append(ZERO)]  # the timeline runs while it finalizes
    # the words still open are recorded when the session ends
    assert server(c, lw.SessionClosed("close_requested", 35.0, "voiced_2"), 35.5) == [
        record("user", "hello", 0, 400), Disconnect("session closed")]
    assert frames(c, 1) == []
    c.on_connection_down("closed 1000", 35.6)
    assert fx(c) == []
    assert c.phase == "idle"
    assert c.status()["billed_minutes"] == round(35 / 60, 2)
    assert c.status()["billed_seconds_reported"] == 35.0


def test_speech_tools_and_the_assistant_keep_the_session_open() -> None:
    tools = ({"type": "function", "name": "get_time", "description": "",
              "parameters": {"type": "object", "properties": {}}},)
    c = open_session(quiet_close_s=10.0, tools=tools)
    c.on_mic_frame(FRAME, 8.0, speech=True)  # the device's VAD heard the user
    c.on_tick(17.9, EXPIRES)
    assert [e for e in fx(c) if not isinstance(e, Send) or e.event["type"] != \
            "session.input_audio.append"] == []
    user(c, "what time is it", 0, 800, now=18.0)
    server(c, lw.DelegationCreated("item_1", "client", 800, None), 18.0)
    c.take_effects()
    c.on_tick(40.0, EXPIRES)  # a tool runs: not quiet
    assert fx(c) == []
    c.on_tool_result("item_1", '{"time": "12:00"}', 41.0)
    c.take_effects()
    output(c, LOUD, now=45.0)
    c.take_effects()
    c.on_tick(54.0, EXPIRES)  # speaking
    assert fx(c) == []
    output(c, *[QUIET] * 5, now=45.5)
    c.on_playback_drained(46.0)
    c.take_effects()
    c.on_tick(55.0, EXPIRES)
    assert fx(c) == [Send({"type": "session.close"}), show(State.READY)]  # type: ignore[typeddict-item]


def test_a_missing_session_closed_still_ends_the_connection() -> None:
    c = open_session(quiet_close_s=10.0)
    c.on_tick(10.0, EXPIRES)
    c.take_effects()
    c.on_tick(15.0, EXPIRES)
    assert fx(c) == []
    c.on_tick(15.1, EXPIRES)
    assert fx(c) == [Disconnect("session.closed did not come")]
    c.on_tick(16.0, EXPIRES)
    assert fx(c) == []  # once
    c.on_connection_down("closed", 16.1)
    assert c.phase == "idle" and fx(c) == []
    # billed: no final usage came, so the time it was open
    assert c.billed_seconds(100.0) == (16.1, 0.0)


def test_billing_while_open_is_an_estimate_and_snapshots_are_not_summed() -> None:
    c = open_session()
    assert c.billed_seconds(10.0) == (10.0, 0.0)
    server(c, lw.UsageUpdated(15.0, None), 14.0)
    server(c, lw.UsageUpdated(30.0, None), 29.0)
    assert c.billed_seconds(29.5) == (30.0, 30.0)
    assert c.billed_seconds(40.0) == (40.0, 30.0)
    server(c, lw.SessionClosed("close_requested", 41.0, None), 41.0)
    assert c.billed_seconds(100.0) == (41.0, 41.0)


def test_a_press_while_closing_opens_a_new_session_once_closed() -> None:
    c = open_session(quiet_close_s=10.0)
    user(c, "hi", 0, 200)
    c.on_tick(10.0, EXPIRES)
    c.take_effects()
    c.on_press(10.5)
    assert fx(c) == [MicOpened()]
    server(c, lw.SessionClosed("close_requested", 10.0, None), 10.6)
    c.take_effects()
    c.on_connection_down("closed", 10.7)
    assert fx(c) == [Reconnect("the user started talking"),
                     show(State.CONNECTING, "opening a Live session")]
    c.on_connection_up(10.8)
    assert fx(c)[0] == start_event(c, input=[lw.history_item("user", "hi")])


# ------------------------------------------------------------------ reconnect


def test_a_drop_mid_conversation_reconnects_with_history() -> None:
    c = open_session()
    user(c, "Set a timer", 0, 600)
    said(c, "Done.", 800, 1000, now=1.0)
    c.take_effects()
    c.on_connection_down("closed 1006", 2.0)
    assert fx(c) == [record("assistant", "Done.", 800, 1000, interrupted=False, heard_ms=0),
                     show(State.CONNECTING, "reconnecting")]
    assert c.phase == "waiting"
    c.on_tick(2.4, EXPIRES)
    assert fx(c) == []
    c.on_tick(2.5, EXPIRES)  # 0.5 s backoff (jitter factor 1.0 in tests)
    assert fx(c) == [Reconnect("reconnecting"), show(State.CONNECTING,
                                                     "opening a Live session")]
    c.on_connection_down("refused", 2.6)  # the attempt fails: 1 s
    assert fx(c) == [show(State.CONNECTING, "reconnecting")]
    c.on_tick(3.5, EXPIRES)
    assert fx(c) == []
    c.on_tick(3.6, EXPIRES)
    assert fx(c)[0] == Reconnect("reconnecting")
    c.on_connection_up(3.7)
    assert fx(c) == [start_event(c, input=[lw.history_item("user", "Set a timer"),
                                           lw.history_item("assistant", "Done.")]),
                     show(State.CONNECTING, "starting the Live session")]
    assert server(c, started(), 4.0) == [show(State.LISTENING)]
    assert c.counters.reconnects == 2 and c.counters.sessions == 2


def test_the_reconnect_backoff_is_the_shared_one_and_follows_new_settings() -> None:
    # rand 0: backoff.Backoff's floor is half the base (the Live core used its own
    # 0.75 floor before); the bounds in force at each attempt apply (SIGHUP)
    c = LiveConversation(LiveSettings(reconnect_min_s=1.0, reconnect_max_s=8.0),
                         conversation_id="conv-1", new_id=new_ids(), rand=lambda: 0.0)
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_down("refused", 0.0)
    c.take_effects()
    c.on_tick(0.49, EXPIRES)
    assert c.phase == "waiting"
    c.on_tick(0.5, EXPIRES)
    assert c.phase == "connecting"
    c.set_settings(LiveSettings(reconnect_min_s=4.0, reconnect_max_s=4.0))
    c.on_connection_down("refused", 1.0)  # second attempt: base min(4 * 2, 4) = 4 s
    c.on_tick(2.99, EXPIRES)
    assert c.phase == "waiting"
    c.on_tick(3.0, EXPIRES)
    assert c.phase == "connecting"


def test_no_reconnect_once_the_conversation_went_quiet() -> None:
    c = open_session(quiet_close_s=30.0)
    c.on_connection_down("closed 1006", 20.0)
    assert fx(c) == [show(State.CONNECTING, "reconnecting")]
    c.on_tick(31.0, EXPIRES)  # quiet by the time it would retry
    assert fx(c) == [show(State.READY)]
    assert c.phase == "idle" and not c.mic_on
    c = open_session(quiet_close_s=30.0)
    c.on_connection_down("closed 1006", 40.0)
    assert fx(c) == [show(State.READY)] and c.phase == "idle"


def test_an_expired_session_is_replaced_while_the_conversation_is_active() -> None:
    c = open_session()
    user(c, "and then", 0, 400, now=100.0)
    c.take_effects()
    assert server(c, lw.SessionClosed("expired", 110.0, None), 110.0) == [
        record("user", "and then", 0, 400), Reconnect("session expired"),
        show(State.CONNECTING, "opening a Live session")]
    c.on_connection_down("closed 1000", 110.1)  # the old socket: nothing changes
    assert fx(c) == []
    c.on_connection_up(110.2)
    assert fx(c)[0] == start_event(c, input=[lw.history_item("user", "and then")])


def test_the_backoff_doubles_up_to_its_cap() -> None:
    c = open_session(reconnect_min_s=1.0, reconnect_max_s=4.0)
    now = 0.0
    delays = []
    c.on_connection_down("lost", now)
    for _ in range(5):
        c.take_effects()
        t = now
        while c.phase == "waiting":
            t += 0.25
            c.on_tick(t, EXPIRES)
        delays.append(t - now)
        now = t
        c.on_press(now)  # keeps the conversation active
        c.on_press(now)
        c.on_connection_down("refused", now)
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_press_while_waiting_reconnects_at_once() -> None:
    c = open_session()
    c.on_press(1.0)
    c.on_connection_down("lost", 1.0)
    c.take_effects()
    c.on_press(1.1)
    assert fx(c) == [MicOpened(), Reconnect("the user pressed the button"),
                     show(State.CONNECTING, "opening a Live session")]


# ------------------------------------------------------------------ tools


TOOLS: tuple[Any, ...] = (
    {"type": "function", "name": "get_time", "description": "The time.",
     "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "set_volume", "description": "The volume.",
     "parameters": {"type": "object", "required": ["action"],
                    "properties": {"action": {"type": "string"}}}},
)


def test_a_delegation_calls_the_tool_the_user_asked_for() -> None:
    c = open_session(tools=TOOLS)
    user(c, "What time", 0, 400)
    user(c, " is it?", 400, 800)
    assert server(c, lw.DelegationCreated("item_7", "client", 800, None), 1.0) == [
        CallTool("item_7", "get_time", "{}"), show(State.THINKING, "running get_time")]
    assert said(c, "Let me check.", 1000, 1400) == [record("user", "What time is it?", 0,
                                                           800)]
    c.on_tool_result("item_7", '{"time": "12:00"}', 1.5)
    assert fx(c) == [Send({"type": "session.commentary.append",  # type: ignore[typeddict-item]
                           "content": 'Result of get_time: {"time": "12:00"}',
                           "delegation_id": "item_7"}),
                     show(State.LISTENING)]
    c.on_tool_result("item_7", "{}", 1.6)  # answered already
    assert fx(c) == []
    assert c.counters.tool_calls == 1


def test_a_delegation_waits_for_words_transcribed_late() -> None:
    c = open_session(tools=TOOLS)
    said(c, "Hello.", 0, 400)
    assert server(c, lw.DelegationCreated("item_1", "client", 1800, None)) == [
        show(State.THINKING)]
    assert user(c, "make it louder", 1000, 1800) == [
        record("assistant", "Hello.", 0, 400, interrupted=False, heard_ms=0),
        CallTool("item_1", "set_volume", '{"action": "up"}'),
        show(State.THINKING, "running set_volume")]


def test_a_delegation_nothing_matches_is_answered_after_the_wait() -> None:
    c = open_session(tools=TOOLS, delegation_wait_ms=1000)
    user(c, "book me a flight", 0, 800)
    server(c, lw.DelegationCreated("item_2", "client", 800, None))
    assert fx(c) == []
    frames(c, 89)  # 1780 ms of timeline: still waiting
    assert c.counters.delegations_unmatched == 0
    c.on_mic_frame(FRAME, 0.0)
    assert fx(c) == [append(FRAME), Send({  # type: ignore[typeddict-item]
        "type": "session.commentary.append", "content": LiveSettings().no_tool_reply,
        "delegation_id": "item_2"}), show(State.LISTENING)]


def test_calls_are_cancelled_when_the_session_ends_and_results_dropped() -> None:
    c = open_session(tools=TOOLS)
    user(c, "what's the date", 0, 800)
    server(c, lw.DelegationCreated("item_3", "client", 800, None))
    c.take_effects()
    c.on_connection_down("lost", 1.0)
    assert fx(c)[:2] == [record("user", "what's the date", 0, 800), CancelTool("item_3")]
    c.on_tool_result("item_3", "{}", 1.1)
    assert fx(c) == []


def test_other_delegation_targets_are_not_answered() -> None:
    c = open_session(tools=TOOLS)
    user(c, "what time", 0, 400)
    assert server(c, lw.DelegationCreated("item_4", "responses", 400, "resp_1")) == []


def test_end_conversation_waits_for_the_goodbye() -> None:
    tools = ({"type": "function", "name": "end_conversation", "description": "",
              "parameters": {"type": "object", "properties": {}}},)
    c = open_session(tools=tools)
    user(c, "goodbye", 0, 400)
    assert server(c, lw.DelegationCreated("item_5", "client", 400, None))[0] == CallTool(
        "item_5", "end_conversation", "{}")
    c.end_conversation()  # the tool, through the supervisor's Device
    c.on_tool_result("item_5", '{"ok": true}', 1.0)
    assert not_audio(fx(c) + frames(c, 10)) == [Send({  # type: ignore[typeddict-item]
        "type": "session.commentary.append", "content": 'Result of end_conversation: '
        '{"ok": true}', "delegation_id": "item_5"}), show(State.LISTENING)]
    output(c, LOUD)  # the goodbye
    c.take_effects()
    output(c, *[QUIET] * 5)
    c.on_playback_drained(2.0)
    assert fx(c) == [record("user", "goodbye", 0, 400),
                     Send({"type": "session.close"}),  # type: ignore[typeddict-item]
                     show(State.READY)]
    assert c.conversation_id == "conv-2" and not c.mic_on
    # an end asked for with no goodbye after it ends after 8 s of timeline
    c = open_session()
    c.end_conversation()
    assert not_audio(frames(c, 399)) == []
    assert not_audio(frames(c, 1)) == [Send({"type": "session.close"}),  # type: ignore[typeddict-item]
                                       show(State.READY)]


# ------------------------------------------------------------------ errors


def test_a_refused_key_before_start_is_the_error_state() -> None:
    c = fresh()
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_up(0.0)
    c.take_effects()
    assert server(c, lw.ServerError("invalid_request_error", "invalid_api_key", "bad key",
                                    None, None)) == [
        Disconnect("refused"),
        show(State.ERROR, "the service refused the session: invalid_api_key: check the "
                          "API key")]
    c.on_connection_down("closed", 0.1)
    assert fx(c) == [] and c.phase == "idle"


def test_a_refused_session_start_is_the_error_state_not_a_loop() -> None:
    c = fresh()
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_up(0.0)
    c.take_effects()
    effects = server(c, lw.ServerError("invalid_request_error", "unknown_parameter", "no",
                                       "session.audio.output.speed", "voiced_1"))
    assert effects[0] == Disconnect("refused") and c.state == State.ERROR
    c.on_connection_down("closed", 0.1)
    c.on_tick(100.0, EXPIRES)
    assert [e for e in fx(c) if isinstance(e, Reconnect)] == []


def test_errors_in_an_open_session_are_logged_not_fatal() -> None:
    c = open_session()
    assert server(c, lw.ServerError("invalid_request_error", "invalid_value", "too long",
                                    "content", "voiced_9")) == []
    assert server(c, lw.ServerError("x", "invalid_api_key", "m", None, None)) == []
    assert server(c, lw.ServerError("x", "context_injection_incomplete", "m", None,
                                    None)) == []
    assert c.state == State.LISTENING and c.counters.server_errors == 3


def test_no_session_started_in_time_is_a_lost_session() -> None:
    c = fresh()
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_up(0.0)
    c.take_effects()
    c.on_tick(15.0, EXPIRES)
    assert fx(c) == []
    c.on_tick(15.1, EXPIRES)
    assert fx(c) == [Disconnect("session.started did not come")]
    c.on_connection_down("closed", 15.2)
    assert fx(c) == [show(State.CONNECTING, "reconnecting")]


def test_status_reports_the_live_figures() -> None:
    c = open_session()
    server(c, lw.UsageUpdated(60.0, None), 60.0)
    status = c.status()
    assert status["api"] == "live" and status["session_id"] == SID
    assert status["billed_minutes"] == 1.0 and status["session"] == "open"
    assert status["mic"] == "on" and status["connected"] is True
    assert status["session_expires_at"] == EXPIRES


# ------------------------------------------------------------------ hostile sequences

_EVENTS = st.one_of(
    st.builds(lw.TranscriptDelta, st.sampled_from(["user", "assistant"]),
              st.text(max_size=4), st.text(max_size=8), st.integers(0, 10_000),
              st.integers(0, 10_000)),
    st.builds(lambda n, loud: lw.OutputAudio((b"\x00\x30" if loud else b"\0\0") * n),
              st.integers(0, 3000), st.booleans()),
    st.builds(lw.DelegationCreated, st.text(max_size=4), st.sampled_from(["client", "x"]),
              st.integers(0, 10_000), st.none()),
    st.builds(lw.InputMuted, st.booleans(), st.none()),
    st.builds(lw.UsageUpdated, st.none() | st.floats(0, 1e6), st.none()),
    st.builds(lw.SessionClosed, st.sampled_from(["expired", "close_requested", "content",
                                                 "connection_lost"]),
              st.none() | st.floats(0, 1e6), st.none()),
    st.builds(lambda: started()),
    st.builds(lw.ServerError, st.text(max_size=4), st.sampled_from(
        [None, "invalid_api_key", "x"]), st.text(max_size=4), st.none(),
        st.none() | st.just("voiced_1")),
)
_INPUTS = st.lists(st.one_of(
    _EVENTS.map(lambda e: ("event", e)),
    st.sampled_from(["press", "long", "talk_start", "talk_end", "interrupt", "frame",
                     "speech", "up", "down", "drained", "stopped", "tick", "result",
                     "fault", "restored"]).map(lambda k: (k, None))), max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_INPUTS)
def test_fuzz_any_sequence_of_inputs_keeps_the_core_consistent(
        steps: list[tuple[str, Any]]) -> None:
    c = fresh(tools=TOOLS, quiet_close_s=5.0)
    c.on_devices_ready()
    now = 0.0
    for kind, ev in steps:
        now += 0.7
        match kind:
            case "event":
                c.on_server_event(ev, now)
            case "press":
                c.on_press(now)
            case "long":
                c.on_long_press(now)
            case "talk_start":
                c.on_talk_start(now)
            case "talk_end":
                c.on_talk_end(now)
            case "interrupt":
                c.on_interrupt(now)
            case "frame" | "speech":
                c.on_mic_frame(FRAME, now, speech=kind == "speech")
            case "up":
                c.on_connection_up(now)
            case "down":
                c.on_connection_down("lost", now)
            case "drained":
                c.on_playback_drained(now)
            case "stopped":
                c.on_playback_stopped(now, {})
            case "tick":
                c.on_tick(now, EXPIRES)
            case "result":
                c.on_tool_result("x", "{}", now)
            case "fault":
                c.on_device_fault("gone")
            case "restored":
                c.on_device_restored()
        for e in c.take_effects():
            if isinstance(e, Send):
                strict_client_event(lw.encode(e.event))  # type: ignore[arg-type]
            elif isinstance(e, Record | Draft):
                json.dumps(e.transcript.metadata).encode()
                e.transcript.text.encode()
            elif isinstance(e, Play):
                assert e.pcm and len(e.pcm) % 2 == 0
        assert c.state == c._derive()[0]
        assert c.billed_seconds(now)[0] >= 0
        # what must never be: audio sent while no session is open
    status = c.status()
    json.dumps(status)


@pytest.mark.parametrize("pcm", [b"", b"\x00"])
def test_odd_output_chunks_do_not_break_the_track(pcm: bytes) -> None:
    c = open_session()
    assert output(c, pcm) == []
    assert base64.b64encode(pcm) is not None


def test_a_server_that_never_stops_cannot_grow_the_core() -> None:
    c = open_session(max_transcript_bytes=1000)
    records = 0
    for i in range(2000):  # replies, and their playback never reported
        output(c, LOUD, *[QUIET] * 5)
        effects = said(c, "word " * 50, i * 3000, i * 3000 + 600)
        records += sum(isinstance(e, Record) for e in effects)
    assert len(c.track.bursts) <= 128 and len(c.records.unrecorded) <= 16
    assert records >= 1980  # recorded without playback reports once the bound is hit
    for i in range(2000):  # one endless utterance
        said(c, "word " * 50, 10**7 + i * 200, 10**7 + i * 200 + 200)
    assert c.records.assembler.open["assistant"].size <= 1000
    assert c.records.assembler.fragments_cut > 1900


def test_new_settings_apply_to_the_next_session() -> None:
    c = open_session(quiet_close_s=30.0)
    c.set_settings(LiveSettings(instructions="Be kind.", voice="cedar", quiet_close_s=5.0,
                                tools=TOOLS))
    assert fx(c) == []
    c.on_tick(5.0, EXPIRES)  # the quiet time applies at once
    assert fx(c) == [Send({"type": "session.close"}), show(State.READY)]  # type: ignore[typeddict-item]
    server(c, lw.SessionClosed("close_requested", 5.0, None), 5.0)
    c.on_connection_down("closed", 5.1)
    c.on_press(6.0)
    c.on_connection_up(6.1)
    start = next(e for e in c.take_effects() if isinstance(e, Send)).event
    assert start["session"]["audio"]["output"]["voice"] == "cedar"  # type: ignore[typeddict-item]
    assert start["session"]["instructions"].startswith("Be kind.")  # type: ignore[typeddict-item]
    assert "get_time" in start["session"]["instructions"]  # type: ignore[typeddict-item]


def test_the_safety_filter_ends_the_session_for_good() -> None:
    c = open_session()
    user(c, "something", 0, 400, now=1.0)
    assert server(c, lw.SessionClosed("content", 2.0, None), 2.0) == [
        record("user", "something", 0, 400), Disconnect("closed by the service: content"),
        show(State.READY)]
    assert not c.mic_on
    c.on_connection_down("closed", 2.1)
    c.on_tick(3.0, EXPIRES)
    assert fx(c) == [] and c.phase == "idle"


def test_a_remote_end_when_quiet_is_not_reopened() -> None:
    c = open_session(quiet_close_s=10.0)
    assert server(c, lw.SessionClosed("remote_hangup", None, None), 50.0) == [
        Disconnect("session remote_hangup"), show(State.READY)]
    assert c.billed_seconds(60.0) == (50.0, 0.0)  # no final usage: the time it was open


def test_a_tool_result_after_the_session_ended_and_a_sink_that_refuses_audio() -> None:
    c = open_session(tools=TOOLS)
    user(c, "what time", 0, 400)
    server(c, lw.DelegationCreated("item_1", "client", 400, None))
    output(c, LOUD)
    c.on_playback_full(f"{SID}@0", 1200, 0.5)  # half of it never reaches the speaker
    c.take_effects()
    c.on_long_press(1.0)  # the session closes; the running tool is cancelled
    assert CancelTool("item_1") not in c.take_effects()  # closing: not yet over
    server(c, lw.SessionClosed("close_requested", 1.0, None), 1.1)
    c.take_effects()
    c.on_tool_result("item_1", "{}", 1.2)
    assert fx(c) == []
    assert c.counters.playback_overflows == 1


def test_long_press_while_a_session_starts_gives_it_up() -> None:
    c = fresh()
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_up(0.1)
    c.take_effects()
    c.on_long_press(0.2)
    assert fx(c) == [Disconnect("new conversation"), show(State.READY)]
    assert server(c, started()) == []  # too late: ignored
    c.on_connection_down("closed", 0.3)
    assert fx(c) == [] and c.phase == "idle"
    c.on_connection_up(0.4)  # a connection nobody asked for
    assert fx(c) == [Disconnect("not wanted")]


def test_notices_and_unknown_events_change_nothing() -> None:
    c = open_session()
    assert server(c, lw.Info("data_channel_permissions", "m")) == []
    assert server(c, lw.Unhandled("session.updated", {})) == []
    assert server(c, lw.ContextAppended("thinking", 0, 0, "voiced_2")) == []


def test_a_reply_still_playing_when_the_daemon_stops_is_recorded_not_lost() -> None:
    c = open_session()
    user(c, "What's the time", 600, 1200)
    output(c, *[QUIET] * 14)
    said(c, "It's noon.", 1400, 1800)
    output(c, *[LOUD] * 4, *[QUIET] * 5)
    frames(c, 190)  # the segment closes; its audio was queued, never reported played
    c.take_effects()
    c.on_stopping()
    assert [e for e in fx(c) if isinstance(e, Record)] == [
        record("assistant", "It's noon.", 1400, 1800, interrupted=True, heard_ms=0)]
    c.on_stopping()  # a second call records nothing twice
    assert [e for e in fx(c) if isinstance(e, Record)] == []
