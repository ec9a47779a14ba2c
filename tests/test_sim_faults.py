"""The simulator's fault modes, its function-call trigger, and `voiced sim` as a command."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import QUESTION_WAV, TIMEOUT, clean_env, voiced_cmd
from voiced.audio.filebackend import read_wav_as_wire
from voiced.sim.server import ManualClock, SimOptions, SimServer

SPEECH = read_wav_as_wire(QUESTION_WAV)
SILENCE = bytes(24000 * 2)  # 1 s


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def until(ws: ClientConnection, type_: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        ev = await recv_json(ws)
        seen.append(ev)
        if ev.get("type") == type_:
            return seen


async def configure(ws: ClientConnection, **session: Any) -> None:
    await until(ws, "session.created")
    await ws.send(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {
            "transcription": {"model": "gpt-4o-mini-transcribe"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5,
                               "prefix_padding_ms": 300, "silence_duration_ms": 400}}},
        **session}}))
    await until(ws, "session.updated")


async def speak(ws: ClientConnection, pcm: bytes = SPEECH + SILENCE) -> None:
    for i in range(0, len(pcm), 960):
        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                  "audio": base64.b64encode(pcm[i:i + 960]).decode()}))


async def test_drop_mid_response_aborts_without_close_frame() -> None:
    async with SimServer(SimOptions(pace=8, drop_mid_response=1)) as sim:
        async with connect(sim.url) as ws:
            await configure(ws)
            await speak(ws)
            with pytest.raises(ConnectionClosed) as exc:
                await until(ws, "response.done")
            assert exc.value.rcvd is None  # no close frame: what a network drop looks like
        # the next connection and reply are whole
        async with connect(sim.url) as ws:
            await configure(ws)
            await speak(ws)
            events = await until(ws, "response.done")
            assert events[-1]["response"]["status"] == "completed"


async def test_stall_means_no_pongs() -> None:
    clock = ManualClock()
    async with SimServer(SimOptions(stall_after_s=30), clock=clock) as sim:
        # the client's keepalive notices the stall; its timeout is generous so that a
        # loaded machine answering late is not mistaken for the stall
        async with connect(sim.url, ping_interval=0.5, ping_timeout=3,
                           close_timeout=0.5) as ws:
            await until(ws, "session.created")
            await asyncio.wait_for(await ws.ping(), TIMEOUT)  # answered: not stalled yet
            assert not sim.sessions[0].stalled
            clock.advance(30)  # the simulator's clock: 30 s after the session began
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert sim.sessions[0].stalled


async def test_malformed_and_unknown_frames_are_injected() -> None:
    async with SimServer(SimOptions(malformed_every=1, unknown_every=2)) as sim:
        async with connect(sim.url) as ws:
            frames = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(2)]
            assert json.loads(frames[0])["type"] == "session.created"
            with pytest.raises(ValueError):
                json.loads(frames[1])
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            more = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(3)]
            assert any('"sim.unknown_event"' in str(f) for f in more)


async def test_refusing_connections() -> None:
    async with SimServer() as sim:
        sim.refuse_connections = True
        with pytest.raises(Exception) as exc:
            await asyncio.wait_for(connect(sim.url), TIMEOUT)
        assert "503" in str(exc.value)


async def test_tool_named_in_transcript_triggers_a_function_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from voiced.sim import voice
    monkeypatch.setattr(voice, "transcribe", lambda pcm: ("what is the weather like", True))
    tools = [{"type": "function", "name": "weather", "description": "local weather",
              "parameters": {"type": "object", "properties": {}}}]
    async with SimServer(SimOptions(pace=8)) as sim:
        async with connect(sim.url) as ws:
            await configure(ws, tools=tools)
            await speak(ws)
            events = await until(ws, "response.done")
            types = [e["type"] for e in events]
            assert "response.function_call_arguments.done" in types
            assert "response.output_audio.delta" not in types
            call = next(e for e in events
                        if e["type"] == "response.function_call_arguments.done")
            assert call["name"] == "weather" and json.loads(call["arguments"]) == {}
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "function_call_output", "call_id": call["call_id"],
                "output": '{"sky": "sunny"}'}}))
            await ws.send(json.dumps({"type": "response.create"}))
            events = await until(ws, "response.done")
            said = next(e for e in events
                        if e["type"] == "response.output_audio_transcript.done")
            assert "weather tool says" in said["transcript"] and "sunny" in said["transcript"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def voiced_sim(*args: str) -> AsyncIterator[tuple[int, str]]:
    """`voiced sim` as a process on a free port: its port and the line it printed."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *voiced_cmd("sim", "--port", str(port), *args), env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        yield port, (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), TIMEOUT)


async def test_voiced_sim_command_with_require_key() -> None:
    async with voiced_sim("--require-key", "k1") as (port, line):
        assert f"ws://127.0.0.1:{port}/v1/realtime" in line
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime-2.1"
        async with connect(url, additional_headers={"Authorization": "Bearer wrong"}) as ws:
            ev = await recv_json(ws)
            assert ev["error"]["code"] == "invalid_api_key"
            with pytest.raises(ConnectionClosed) as exc:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert exc.value.rcvd is not None and exc.value.rcvd.code == 3000
        async with connect(url, additional_headers={"Authorization": "Bearer k1"}) as ws:
            assert (await recv_json(ws))["type"] == "session.created"
