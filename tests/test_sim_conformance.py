"""The simulator speaks GA Realtime: every event it sends validates against the openai
package's GA server event types, in upstream's order, with upstream's errors; and the
spec's GA server examples go through voiced's own parser."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.ga_types import GA_SERVER, strict_event
from tests.test_sim_faults import SILENCE, SPEECH, configure, recv_json, speak, until
from voiced import wire
from voiced.sim import voice
from voiced.sim.server import ManualClock, SimOptions, SimServer

# the example payloads of OpenAI's OpenAPI spec (Apache-2.0; provenance in data/README.txt)
EXAMPLES = Path(__file__).resolve().parent / "data" / "realtime-spec-examples.jsonl"

RESPONSE_ORDER = ["response.created", "response.output_item.added",
                  "response.content_part.added", "response.output_audio.delta",
                  "response.output_audio_transcript.delta",
                  "response.output_audio_transcript.done", "response.content_part.done",
                  "response.output_item.done",
                  "response.done"]


async def send(ws: ClientConnection, **event: Any) -> None:
    await ws.send(json.dumps(event))


async def error_for(ws: ClientConnection, **event: Any) -> dict[str, Any]:
    await send(ws, event_id="evt_mine", **event)
    ev = await until(ws, "error")
    return dict(ev[-1]["error"])


async def test_every_event_the_simulator_sends_is_ga(tmp_path: Path) -> None:
    tools = [{"type": "function", "name": "weather", "description": "local weather",
              "parameters": {"type": "object", "properties": {}}}]
    def reply(heard: str) -> str:  # a story long enough to be interrupted
        return "Once upon a time. " * 40 if "story" in heard else f"You said: {heard}"

    # its sessions end only when the test moves the clock
    async with SimServer(SimOptions(pace=8, reply=reply), clock=ManualClock()) as sim:
        async with connect(sim.url) as ws:
            await configure(ws, instructions="Be brief.")
            await speak(ws)
            events = await until(ws, "response.done")
            types = [e["type"] for e in events]
            # VAD: started < stopped, committed, the user item, its transcript
            for t in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                      "input_audio_buffer.committed", "conversation.item.added",
                      "conversation.item.done",
                      "conversation.item.input_audio_transcription.completed"):
                assert t in types, t
            started = next(e for e in events if e["type"].endswith("speech_started"))
            stopped = next(e for e in events if e["type"].endswith("speech_stopped"))
            speech_ms = len(SPEECH) / 2 / 24  # the question, then 1 s of silence
            assert 0 <= started["audio_start_ms"] < 1000
            assert speech_ms - 600 <= stopped["audio_end_ms"] <= speech_ms + 600
            # the reply in GA order, each kind present
            resp = [t for t in types if t.startswith("response.")]
            firsts = [resp.index(t) for t in RESPONSE_ORDER]
            assert firsts == sorted(firsts), resp
            # upstream ends the audio stream after its last delta, before the part is done
            last_delta = len(resp) - 1 - resp[::-1].index("response.output_audio.delta")
            assert last_delta < resp.index("response.output_audio.done") < resp.index(
                "response.content_part.done")
            done = events[-1]["response"]
            assert done["status"] == "completed" and done["usage"]["total_tokens"] > 0

            # client mistakes: errors carry the client's event_id and the param
            err = await error_for(ws, type="response.cancel")
            assert err["code"] == "response_cancel_not_active"
            assert err["event_id"] == "evt_mine"
            audio_item = next(e["item"]["id"] for e in events
                              if e["type"] == "response.output_item.done")
            err = await error_for(ws, type="conversation.item.truncate", item_id=audio_item,
                                  content_index=0, audio_end_ms=10**7)
            assert err["param"] == "audio_end_ms"
            await send(ws, type="conversation.item.truncate", item_id=audio_item,
                       content_index=0, audio_end_ms=300)
            await until(ws, "conversation.item.truncated")
            await send(ws, type="input_audio_buffer.clear")  # the trailing silence
            await until(ws, "input_audio_buffer.cleared")
            await send(ws, type="input_audio_buffer.append",
                       audio=base64.b64encode(bytes(960)).decode())  # 20 ms
            err = await error_for(ws, type="input_audio_buffer.commit")
            assert err["code"] == "input_audio_buffer_commit_empty"
            err = await error_for(ws, type="conversation.item.frobnicate")
            assert err["param"] == "type"
            err = await error_for(ws, type="conversation.item.create")
            assert err["param"] == "item"

            # a reply interrupted by new speech, and one cancelled by the client
            await send(ws, type="conversation.item.create", item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "tell me a long story"}]})
            await send(ws, type="response.create")
            await until(ws, "response.output_audio.delta")
            await speak(ws, SPEECH[:24000 * 2] + SILENCE)
            cut = await until(ws, "response.done")
            assert cut[-1]["response"]["status"] == "cancelled"
            assert "input_audio_buffer.speech_started" in [e["type"] for e in cut]
            await until(ws, "response.output_audio.delta")  # the reply to the new words
            await send(ws, type="response.cancel")
            cancelled = await until(ws, "response.done")
            assert cancelled[-1]["response"]["status"] == "cancelled"

            # a transcript that names a declared tool makes a function_call item
            await send(ws, type="session.update", session={"type": "realtime",
                                                            "tools": tools})
            await until(ws, "session.updated")
            await send(ws, type="conversation.item.create", item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "what is the weather"}]})
            await send(ws, type="response.create")
            call = await until(ws, "response.done")
            assert "response.function_call_arguments.done" in [e["type"] for e in call]

    clock = ManualClock()
    async with SimServer(SimOptions(pace=8), clock=clock) as short:
        async with connect(short.url) as ws:
            await until(ws, "session.created")
            clock.advance(3599)
            await send(ws, type="input_audio_buffer.clear")
            await until(ws, "input_audio_buffer.cleared")  # a second to go: still open
            clock.advance(1)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await recv_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        sim.sessions.extend(short.sessions)

    sent = [e for s in sim.sessions for e in s.sent]
    assert any(e["type"] == "error" and e["error"]["code"] == "session_expired" for e in sent)
    kinds = set()
    for event in sent:
        strict_event(event)  # raises with the offending field if not GA
        kinds.add(event["type"])
    assert {"session.created", "session.updated", "error", "conversation.item.truncated",
            "input_audio_buffer.cleared", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", *RESPONSE_ORDER} <= kinds, sorted(kinds)


async def test_require_key_and_the_beta_dialect_are_refused_like_upstream() -> None:
    async with SimServer(SimOptions(require_key="sk-right")) as sim:
        async with connect(sim.url, additional_headers={"Authorization": "Bearer sk-wrong"}
                           ) as ws:
            ev = await recv_json(ws)
            assert ev["error"]["code"] == "invalid_api_key"
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 3000
        async with connect(sim.url, additional_headers={
                "Authorization": "Bearer sk-right", "OpenAI-Beta": "realtime=v1"}) as ws:
            ev = await recv_json(ws)
            assert ev["error"]["code"] == "beta_api_shape_disabled"
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
        async with connect(sim.url, additional_headers={"Authorization": "Bearer sk-right"}
                           ) as ws:
            assert (await recv_json(ws))["type"] == "session.created"


def ga_server_examples() -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    return [r["event"] for r in rows if r["spec_dialect_label"] == "ga"
            and r["direction"] == "server" and r["validates_against_openai_3_57_0"]]


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


def test_spec_ga_server_examples_go_through_our_parser() -> None:
    examples = ga_server_examples()
    assert len(examples) >= 30
    typed = 0
    for raw in examples:
        GA_SERVER.validate_python(raw)
        # the simulator sends what it builds with json.dumps: the text survives as is
        frame = json.dumps(raw)
        assert json.loads(frame) == raw
        if raw["type"] == "response.output_audio.delta" and not _is_base64(raw["delta"]):
            # the spec's example carries the placeholder "Base64EncodedAudioDelta": audio
            # that cannot be decoded is a malformed frame to us, counted, never played
            with pytest.raises(wire.MalformedEvent, match="base64"):
                wire.parse_server_event(frame)
            continue
        ev = wire.parse_server_event(frame)  # never MalformedEvent for a valid GA event
        if isinstance(ev, wire.Unhandled):
            assert ev.type == raw["type"] and ev.raw == raw
            continue
        typed += 1
        for name in ("item_id", "response_id", "transcript", "audio_end_ms", "audio_start_ms",
                     "content_index"):
            if name in raw and hasattr(ev, name):
                assert getattr(ev, name) == raw[name], (raw["type"], name)
        if isinstance(ev, wire.AudioDelta):
            assert ev.pcm == base64.b64decode(raw["delta"])
        if isinstance(ev, wire.ServerError):
            assert ev.code == raw["error"].get("code")
    assert typed >= 10  # the events voiced acts on are among the examples


async def test_the_demo_question_is_heard_and_answered() -> None:
    """Content: the simulator really recognises speech (pocketsphinx, which the test
    setup installs); a placeholder transcript fails this test."""
    assert voice.transcribe(SPEECH)[1], "the simulator's recogniser is not installed"
    async with SimServer(SimOptions(pace=8)) as sim, connect(sim.url) as ws:
        await configure(ws)
        await speak(ws)
        events = await until(ws, "rate_limits.updated")
        heard = next(e["transcript"] for e in events if e["type"].endswith(
            "input_audio_transcription.completed"))
        said = next(e["transcript"] for e in events
                    if e["type"] == "response.output_audio_transcript.done")
        # the question is "what's the weather like today?"
        assert "weather" in heard.split() and "simulated" not in heard
        assert said == f"You said: {heard}"
        audio = b"".join(base64.b64decode(e["delta"]) for e in events
                         if e["type"] == "response.output_audio.delta")
        assert len(audio) > 24000  # more than half a second of reply at 24 kHz
        await asyncio.sleep(0)
