"""`voiced run` as a subprocess against a real websockets server playing a GA conversation."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import uuid
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from tests.conftest import QUESTION_WAV, TIMEOUT, clean_env, voiced_cmd, write_config
from voiced.audio.filebackend import read_wav_as_wire
from voiced.sim.server import SimOptions, SimServer
from voiced.transcripts import RECORD_NAMESPACE

FRAME = 480  # samples in one 20 ms frame at 24 kHz


def make_48k_stereo(path: Path) -> None:
    """The shipped question as a typical USB mic delivers it: 48 kHz, two channels."""
    with wave.open(str(QUESTION_WAV), "rb") as w:
        mono = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        rate = w.getframerate()
    up = soxr.resample(mono, rate, 48000).astype("<i2")
    stereo = np.repeat(up, 2)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(stereo.tobytes())


async def ctl(cfg: Path, command: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *voiced_cmd("ctl", "-c", str(cfg), command), env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    if proc.returncode != 0:
        return {"error": err.decode()}
    return json.loads(out) if command == "status" else {"state": out.decode().strip()}


async def status(cfg: Path) -> dict[str, Any]:
    """The daemon's status for a poll, asked in this process over the control socket.

    Waiting loops ask many times a second: a `voiced ctl` child for each (an interpreter
    with coverage) kept a core busy and slowed every other test. `ctl()` still runs the
    command line wherever a test acts or asserts on its answer. Shaped like `ctl()`'s:
    ``{"error": ...}`` while the daemon does not answer.
    """
    from voiced.config import load
    from voiced.control import request

    path = load(cfg, require_secrets=False).control.socket
    try:
        reply = await asyncio.to_thread(request, path, "status", timeout_s=TIMEOUT)
    except (OSError, ValueError) as e:
        return {"error": str(e)}
    status: dict[str, Any] = reply["status"] if reply.get("ok") else {
        "error": reply.get("error")}
    return status


async def wait_for_status(cfg: Path, pred: Any, seen: list[str]) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            st = await status(cfg)
            if "state" in st and (not seen or seen[-1] != st["state"]):
                seen.append(st["state"])
            if "state" in st and pred(st):
                return st
            await asyncio.sleep(0.03)
    return await asyncio.wait_for(poll(), TIMEOUT)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(240)  # its own waits add up to 4 x TIMEOUT
async def test_run_holds_a_ga_conversation_end_to_end(tmp_path: Path,
                                                      user_transcript: str) -> None:
    wav = tmp_path / "question48k.wav"
    make_48k_stereo(wav)
    expected = read_wav_as_wire(wav)  # the same conversion a mic stream goes through
    async with SimServer(SimOptions(user_transcript=user_transcript)) as sim:
        cfg = write_config(tmp_path, sim.url, input_wav=wav)
        proc = await asyncio.create_subprocess_exec(
            *voiced_cmd("run", "-c", str(cfg)), env=clean_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        seen: list[str] = []
        try:
            await wait_for_status(cfg, lambda s: s["state"] == "ready", seen)
            assert (await ctl(cfg, "press"))["state"] == "listening"
            jsonl = tmp_path / "t.jsonl"

            async def two_records() -> None:
                while len(read_jsonl(jsonl)) < 2:
                    st = await ctl(cfg, "status")
                    if "state" in st and seen[-1] != st["state"]:
                        seen.append(st["state"])
                    await asyncio.sleep(0.03)
            await asyncio.wait_for(two_records(), TIMEOUT * 2)
            final = await wait_for_status(cfg, lambda s: s["state"] == "listening", seen)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err_b = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        stderr = err_b.decode()
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr

        session = sim.sessions[0]
        # a valid GA session.update came first
        first = session.received[0]
        assert first["type"] == "session.update"
        s = first["session"]
        assert s["type"] == "realtime"
        assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert s["audio"]["output"]["voice"] == "marin"
        assert s["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        assert s["audio"]["input"]["transcription"]["model"]
        assert all(isinstance(e.get("event_id"), str) for e in session.received)
        from openai.types.realtime import RealtimeClientEvent
        from pydantic import TypeAdapter
        TypeAdapter(RealtimeClientEvent).validate_python(first)

        # the appended audio is the WAV converted to 24 kHz mono, bit for bit, from the
        # press on, then silence; its speech spans the WAV's speech within one frame
        appended = bytes(session.appended)
        assert len(appended) % 2 == 0
        assert appended[:len(expected)] == expected
        a = np.frombuffer(appended, dtype="<i2")
        e = np.frombuffer(expected, dtype="<i2")
        loud_a = np.flatnonzero(np.abs(a) > 300)
        loud_e = np.flatnonzero(np.abs(e) > 300)
        assert abs(loud_a[-1] - loud_e[-1]) <= FRAME
        assert abs(loud_a[0] - loud_e[0]) <= FRAME
        appends = [ev for ev in session.received if ev["type"] == "input_audio_buffer.append"]
        assert appends  # (audio payloads are elided from session.received)

        # the reply audio reached the output WAV bit-exact, after the user's speech
        reply = b"".join(base64.b64decode(ev["delta"]) for ev in session.sent
                         if ev["type"] == "response.output_audio.delta")
        with wave.open(str(tmp_path / "out.wav"), "rb") as w:
            assert (w.getframerate(), w.getnchannels()) == (24000, 1)
            out = w.readframes(w.getnframes())
        pos = out.find(reply)
        assert pos > 0, "reply audio not found intact in the output WAV"
        assert not any(out[:pos]), "something other than silence played before the reply"
        assert pos / 2 / 24000 > len(expected) / 2 / 24000  # after the user spoke

        # both transcripts, with the contract's fields
        records = read_jsonl(tmp_path / "t.jsonl")
        assert [r["role"] for r in records] == ["user", "assistant"]
        user, assistant = records
        for r in records:
            assert set(r) == {"id", "conversation_id", "device_id", "role", "text",
                              "created_at", "metadata"}
            assert r["device_id"] == "test-device"
            assert r["id"] == str(uuid.uuid5(RECORD_NAMESPACE,
                                             f"test-device/{r['metadata']['item_id']}"))
            assert r["created_at"].endswith("Z")
            assert r["conversation_id"] == final["conversation_id"]
        assert user["metadata"]["input_method"] == "realtime_voice"
        assert user["metadata"]["model"] == "gpt-realtime-2.1"
        assert user["text"]
        assert assistant["text"].startswith("You said:")
        md = assistant["metadata"]
        assert md["voice"] == "marin" and md["interrupted"] is False
        assert abs(md["heard_ms"] - len(reply) / 48) <= 1
        assert md["response_id"].startswith("resp_")

        # ctl status walked through the states; the log has every transition
        logged = [line.split("state ", 1)[1].split(":")[0] for line in stderr.splitlines()
                  if " voiced.supervisor: state " in line]
        want = ["connecting", "ready", "listening", "thinking", "speaking", "listening"]
        it = iter(logged)
        assert all(s in it for s in want), logged
        it2 = iter(logged)
        assert all(s in it2 for s in seen), (seen, logged)
        assert {"ready", "listening", "speaking"} <= set(seen)
        assert final["mic"] == "on" and final["connected"] is True
        assert final["version"] and final["outbox_pending"] == 0
