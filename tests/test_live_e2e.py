"""GPT-Live end to end: `voiced run` (a process, file audio) → `voiced sim`'s Live endpoint.

A spoken exchange that is a tool call (a delegation the device answers with get_time's
result as commentary), mute and unmute through the button's press, the transcripts at
the JSONL sink, the quiet close, and `voiced ctl status` reporting the minutes billed.
A second test runs the real Supervisor in process with a clock it moves: the session is
not closed a moment before ``quiet_close_s`` has passed, and is closed once it has.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIMEOUT, clean_env, voiced_cmd, write_config
from tests.test_e2e import ctl, read_jsonl, wait_for_status
from voiced import config
from voiced.core.effects import State
from voiced.sim.server import SimOptions, SimServer
from voiced.supervisor.daemon import Supervisor

KEY = {"OPENAI_API_KEY": "sk-sim-test"}


def live_config(tmp_path: Path, sim: SimServer, quiet_close_s: float) -> Path:
    return write_config(tmp_path, sim.url, realtime={
        "api": "live", "instructions": "You are a kitchen assistant.",
        "live": {"url": sim.live_url, "model": "gpt-live-1", "quiet_close_s": quiet_close_s,
                 "ack_delay_ms": 2000}},
        tools={"builtin": {"volume": False, "microphone": False, "status": False}})


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


@pytest.mark.timeout(300)
async def test_run_holds_a_live_conversation_end_to_end(tmp_path: Path) -> None:
    async with SimServer(SimOptions(transcript="what time is it")) as sim:
        cfg = live_config(tmp_path, sim, quiet_close_s=20)
        env = {**clean_env(), **KEY}
        proc = await asyncio.create_subprocess_exec(
            *voiced_cmd("run", "-c", str(cfg)), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        seen: list[str] = []
        jsonl = tmp_path / "t.jsonl"
        try:
            idle = await wait_for_status(cfg, lambda s: s["state"] == "ready", seen)
            # no session is held while the device waits
            assert (idle["api"], idle["session"], idle["billed_minutes"]) == (
                "live", "idle", 0)
            assert sim.live_sessions == []
            await ctl(cfg, "press")  # the user starts talking: a session opens

            await asyncio.wait_for(_until(lambda: len(read_jsonl(jsonl)) >= 2), TIMEOUT * 2)
            st = await wait_for_status(cfg, lambda s: s["state"] == "listening", seen)
            assert st["session"] == "open" and st["mic"] == "on"
            assert st["tool_calls"] == 1
            live = sim.live_sessions[0]

            # the press mutes (not while speaking: that would interrupt), a press unmutes
            await ctl(cfg, "press")
            st = await wait_for_status(cfg, lambda s: s["mic"] == "off", seen)
            await asyncio.wait_for(_until(lambda: live.muted), TIMEOUT)
            await ctl(cfg, "press")
            await asyncio.wait_for(_until(lambda: not live.muted), TIMEOUT)
            st = await wait_for_status(cfg, lambda s: s["mic"] == "on", seen)

            # quiet_close_s after the last sign of conversation the session is closed
            closed = await wait_for_status(cfg, lambda s: s["session"] == "idle", seen)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err_b = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        stderr = err_b.decode()
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr

    # the orb's states in order (from the log: a status poll misses short ones)
    shown = [line.split("state ", 1)[1] for line in stderr.splitlines() if " state " in line]
    order = ["ready", "connecting: opening a Live session", "listening", "thinking",
             "speaking", "listening", "ready"]
    it = iter(shown)
    assert all(any(s.startswith(want) for s in it) for want in order), shown
    assert closed["state"] == "ready" and closed["mic"] == "off"
    assert closed["sessions"] == 1 and closed["connected"] is False
    # billed: the service's own final figure (timeline seconds in the simulator)
    assert closed["billed_minutes"] > 0
    assert closed["billed_seconds_reported"] > 0

    got = types(live.received)
    start = live.received[0]
    assert start["type"] == "session.start"
    assert start["session"]["model"] == "gpt-live-1"
    assert start["session"]["audio"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert start["session"]["delegation"] == {"type": "client",
                                              "acknowledgement_delay_ms": 2000}
    assert "get_time" in start["session"]["instructions"]
    mute = got.index("session.input_audio.mute")
    unmute = got.index("session.input_audio.unmute")
    assert 0 < mute < unmute < got.index("session.close")
    commentary = [e for e in live.received if e["type"] == "session.commentary.append"]
    assert commentary and commentary[0]["content"].startswith("Result of get_time:")
    assert all(c["delegation_id"] for c in commentary)  # each answers a delegation
    assert types(live.sent)[-1] == "session.closed"
    assert live.sent[-1]["reason"] == "close_requested"
    # the SDK's own types accept every client event the daemon sent
    from openai.types.live import ClientEvent
    from pydantic import TypeAdapter
    adapter: TypeAdapter[Any] = TypeAdapter(ClientEvent)
    for ev in live.received:
        if ev["type"] != "session.input_audio.append":  # audio elided in the record
            adapter.validate_python(ev)

    records = read_jsonl(jsonl)
    user, assistant = records[0], records[1]
    assert (user["role"], user["text"]) == ("user", "what time is it")
    assert assistant["role"] == "assistant" and "get_time" in assistant["text"]
    sid = live.session["id"] if live.session else None
    for r in (user, assistant):
        assert r["metadata"]["api"] == "live" and r["metadata"]["session_id"] == sid
        assert r["device_id"] == "test-device"
        assert r["metadata"]["item_id"].startswith(f"{sid}/{r['role']}/")
    assert assistant["metadata"]["interrupted"] is False
    assert assistant["metadata"]["heard_ms"] > 0


async def _until(pred: Any) -> None:
    # polls what another process or the daemon's own loop owns: no event to wait on
    while not pred():  # noqa: ASYNC110
        await asyncio.sleep(0.02)


@pytest.mark.timeout(200)
async def test_quiet_close_follows_a_clock_the_test_moves(tmp_path: Path) -> None:
    clock = [1000.0]
    async with SimServer(SimOptions(transcript="hello there")) as sim:
        settings = config.parse({
            "device_id": "test-device",
            "realtime": {"api": "live", "live": {"url": sim.live_url, "quiet_close_s": 30}},
            "audio": {"backend": "file", "input": {"file": str(
                Path(__file__).parent.parent / "voiced" / "data" / "question.wav")},
                      "output": {"file": str(tmp_path / "out.wav")}},
            "transcripts": {"sink": "jsonl", "jsonl": {"path": str(tmp_path / "t.jsonl")},
                            "outbox_dir": str(tmp_path / "outbox")},
            "control": {"socket": str(tmp_path / "ctl.sock")},
        }, environ=KEY)
        records: list[dict[str, Any]] = []
        sup = Supervisor(settings, clock=lambda: clock[0],
                         listener=lambda kind, data: records.append(data)
                         if kind == "record" else None)
        ticks = [0]
        give_tick = sup.session.on_tick

        def counted(now: float, wall: float) -> None:
            ticks[0] += 1
            give_tick(now, wall)
        sup.session.on_tick = counted  # type: ignore[method-assign]
        task = asyncio.create_task(sup.run())

        async def ticked(n: int) -> None:
            start = ticks[0]
            await _until(lambda: ticks[0] >= start + n)

        try:
            await asyncio.wait_for(_until(lambda: sup.session.state == State.READY), TIMEOUT)
            sup._on_control("press")
            await asyncio.wait_for(_until(lambda: len(records) >= 2), TIMEOUT * 2)
            await asyncio.wait_for(_until(lambda: sup.session.state == State.LISTENING),
                                   TIMEOUT)
            # however long the machine took, no time passed for the core: still open
            await asyncio.wait_for(ticked(2), TIMEOUT)
            assert sup.status()["session"] == "open"
            clock[0] += 29.0  # a second short of the quiet time
            await asyncio.wait_for(ticked(2), TIMEOUT)
            assert sup.status()["session"] == "open"
            live = sim.live_sessions[0]
            assert "session.close" not in types(live.received)
            clock[0] += 1.5
            await asyncio.wait_for(_until(lambda: sup.status()["session"] == "idle"), TIMEOUT)
            st = sup.status()
        finally:
            sup.request_stop()
            await asyncio.wait_for(task, TIMEOUT)
    assert "session.close" in types(live.received)
    assert live.sent[-1]["type"] == "session.closed"
    assert st["state"] == "ready" and st["sessions"] == 1
    assert st["billed_minutes"] > 0  # the service's final usage
    assert [r["role"] for r in records[:2]] == ["user", "assistant"]
