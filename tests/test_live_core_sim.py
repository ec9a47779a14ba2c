"""The GPT-Live core against `voiced sim`'s Live endpoint, through a stand-in for the
supervisor's wiring (tests/live_rig.py): real sockets, the real parser, real tools and a
real sink; the mic and the speaker on one clock that the test runs as fast as it may.

Not the daemon end to end (the supervisor does not speak Live yet): what the wiring
must do is exactly what the rig does, and the core's behaviour is what these show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import QUESTION_WAV
from tests.live_rig import Rig
from voiced.audio.filebackend import read_wav_as_wire
from voiced.core.effects import State
from voiced.live.core import LiveConversation, LiveSettings
from voiced.sim.server import SimOptions, SimServer
from voiced.sinks.jsonl import JsonlSink
from voiced.tools import Tool, Toolbox
from voiced.transcripts import record_id

SPEECH = read_wav_as_wire(QUESTION_WAV)  # heard as "... weather like ..."
STORY = ("Once upon a time there was a little robot who lived in a lighthouse by the sea, "
         "and every night it counted the ships that sailed past its window until morning.")


def toolbox(calls: list[dict[str, Any]]) -> Toolbox:
    async def get_time(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        return {"time": "12:00"}
    return Toolbox([Tool("get_time", "The current time.",
                         {"type": "object", "properties": {}}, get_time, 5.0)])


def core(tools: Toolbox, **kw: Any) -> LiveConversation:
    c = LiveConversation(LiveSettings(**{"instructions": "Be brief.",
                                         "tools": tools.declarations(), **kw}),
                         conversation_id="conv-1", new_id=lambda: "conv-2")
    c.on_devices_ready()
    return c


def assistant_records(rig: Rig) -> list[dict[str, Any]]:
    return [r for r in rig.records if r["role"] == "assistant"]


async def test_exchange_mute_tool_and_quiet_close(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []
    tools = toolbox(calls)
    c = core(tools, quiet_close_s=8.0)
    sink = JsonlSink(tmp_path / "t.jsonl")
    async with SimServer(SimOptions()) as sim:
        rig = Rig(c, sim.live_url, tools, sink=sink)
        try:
            assert sim.live_sessions == []  # nothing is open while the device waits
            await rig.press()
            rig.say(SPEECH)
            # a spoken exchange
            await rig.run_until(lambda: len(assistant_records(rig)) == 1, 40)
            live = sim.live_sessions[0]
            assert live.said[0] == f"You said: {live.heard[0]}"
            assert "weather" in live.heard[0].split()
            # mute: the LED follows the ack; what is said meanwhile never leaves the device
            await rig.press()
            await rig.run_until(lambda: c.state == State.READY, 5)
            rig.say(SPEECH)
            await rig.run_until(lambda: not rig.mic, 10)
            await rig.press()
            await rig.run_until(lambda: c.state == State.LISTENING, 5)
            assert len(live.heard) == 1
            # a tool: the model delegates, the device infers get_time from the words
            sim.options.transcript = "what time is it please"
            rig.say(SPEECH)
            await rig.run_until(lambda: len(assistant_records(rig)) == 2, 40)
            assert rig.tool_calls == [(rig.tool_calls[0][0], "get_time", "{}")] and calls
            assert live.said[-1] == 'Result of get_time: {"time": "12:00"}'
            # quiet: the session closes 8 s (of audio) after the last conversation
            await rig.run_until(lambda: c.phase == "idle", 30)
            assert live.closed and c.status()["billed_minutes"] > 0
            assert c.state == State.READY and not c.mic_on
        finally:
            await rig.aclose()
    closes = [e for e in live.sent if e["type"] == "session.closed"]
    assert [e["reason"] for e in closes] == ["close_requested"]
    assert [e for e in live.sent if e["type"] == "error"] == []
    # the transcripts at the sink, in the contract's shape
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [(r["role"], r["text"]) for r in lines] == [
        ("user", live.heard[0]), ("assistant", live.said[0]),
        ("user", "what time is it please"), ("assistant", live.said[-1])]
    session = live.session
    assert session is not None
    for r in lines:
        item = r["metadata"]["item_id"]
        assert item == f"{session['id']}/{r['role']}/{r['metadata']['start_ms']}"
        assert r["id"] == record_id("kitchen", item) and r["conversation_id"] == "conv-1"
        assert r["metadata"]["api"] == "live" and r["metadata"]["model"] == "gpt-live-1"
    assert lines[1]["metadata"]["interrupted"] is False
    assert lines[1]["metadata"]["heard_ms"] > 1000
    assert lines[0]["metadata"]["input_method"] == "realtime_voice"


async def test_a_button_interrupt_and_a_new_session_seeded_with_history() -> None:
    tools = toolbox([])
    c = core(tools, instructions=f"Say: {STORY}", quiet_close_s=20.0)
    async with SimServer(SimOptions()) as sim:
        rig = Rig(c, sim.live_url, tools)
        try:
            await rig.press()
            rig.say(SPEECH)
            await rig.run_until(lambda: c.state == State.SPEAKING, 40)
            for _ in range(50):  # a second of the story
                await rig.step()
            await rig.press()  # stop it
            assert c.state == State.LISTENING
            await rig.run_until(lambda: len(assistant_records(rig)) == 1, 40)
            cut = assistant_records(rig)[0]["metadata"]
            assert cut["interrupted"] is True and 500 <= cut["heard_ms"] <= 2000
            assert rig.sent[-1]["type"] == "session.thinking.append"
            # the rest of the story never played: the burst ended at the stop
            assert len(rig.played) == 1
            # a dropped connection mid-conversation: a new session, seeded
            sim.drop_connections()
            await rig.run_until(lambda: len(sim.live_sessions) == 2 and c.connected, 20)
            seeded = sim.live_sessions[1].session
            assert seeded is not None
            assert [i["role"] for i in seeded["input"]] == ["user", "assistant"]
            assert seeded["input"][1]["content"][0]["text"] == STORY
        finally:
            await rig.aclose()
