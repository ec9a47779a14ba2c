"""The simulator's GPT-Live endpoint over a plain socket: its rules, refusals and faults.

The timeline is the input audio, so every test says how much audio it sends and reads
what that audio lets out; nothing here waits on wall time except the recogniser.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.live import client_event_param, session_config_param
from openai.types.live import session_update_config_param as update_param
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.conftest import QUESTION_WAV, TIMEOUT
from tests.live_types import strict_client_event, strict_server_event
from tests.test_sim_schema import _compare, alternatives, kind_of
from voiced.audio.filebackend import read_wav_as_wire
from voiced.sim import live_fields
from voiced.sim.fields import unknown_field
from voiced.sim.live_track import GRID_MS, timed_pieces
from voiced.sim.server import SimOptions, SimServer

SPEECH = read_wav_as_wire(QUESTION_WAV)
BEARER = {"Authorization": "Bearer sk-sim"}
STORY = ("Once upon a time there was a little robot who lived in a lighthouse by the sea, "
         "and every night it counted the ships that sailed past its window until morning.")


class Raw:
    """A plain WebSocket client of /v1/live/sessions; checks every event it reads."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.sent_ms = 0

    async def send(self, event: dict[str, Any], *, check: bool = True) -> None:
        if check:
            strict_client_event(event)
        await self.ws.send(json.dumps(event))

    async def audio(self, pcm: bytes, chunk: int = 2400) -> None:
        """Input audio in 50 ms appends."""
        for i in range(0, len(pcm), chunk):
            piece = pcm[i:i + chunk]
            await self.send({"type": "session.input_audio.append",
                             "audio": base64.b64encode(piece).decode()}, check=False)
            self.sent_ms += len(piece) // 48

    async def next(self) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        strict_server_event(event)
        self.events.append(event)
        return event

    async def until(self, kind: str) -> list[dict[str, Any]]:
        start = len(self.events)
        while (await self.next())["type"] != kind:
            pass
        return self.events[start:]

    async def start(self, **session: Any) -> dict[str, Any]:
        await self.send({"type": "session.start", "event_id": "s1",
                         "session": {"model": "gpt-live-1", **session}})
        return (await self.until("session.started"))[-1]

    def output(self) -> list[bytes]:
        return [base64.b64decode(e["delta"]) for e in self.events
                if e["type"] == "session.output_audio.delta"]


@contextlib.asynccontextmanager
async def raw(sim: SimServer, headers: dict[str, str] = BEARER) -> AsyncIterator[Raw]:
    async with connect(sim.live_url, additional_headers=headers) as ws:
        yield Raw(ws)


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events if e["type"] != "session.output_audio.delta"]


async def test_the_upgrade_needs_a_bearer_key() -> None:
    async with SimServer(SimOptions(require_key="k1")) as sim:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k1"}):
            with pytest.raises(InvalidStatus) as refused:
                async with raw(sim, headers):
                    pass
            assert refused.value.response.status_code == 401
        async with raw(sim, {"Authorization": "Bearer k1"}) as c:
            assert (await c.start())["session"]["id"].startswith("live_")


async def test_nothing_before_session_start_but_errors() -> None:
    async with SimServer() as sim, raw(sim) as c:
        await c.audio(bytes(4800))  # two appends
        await c.ws.send(b"\x00binary")
        await c.ws.send("{not json")
        await c.start()
        assert kinds(c.events) == ["error", "error", "error", "error", "session.started"]
        assert [e["error"]["code"] for e in c.events[:4]] == [
            "session_not_started", "session_not_started", "invalid_event", "invalid_json"]
        await c.send({"type": "session.start", "session": {"model": "gpt-live-1"}})
        assert (await c.next())["error"]["code"] == "session_already_started"


async def test_output_comes_only_as_input_time_advances() -> None:
    async with SimServer() as sim, raw(sim) as c:
        await c.start()
        await c.audio(bytes(48 * 250))  # 250 ms
        await c.send({"type": "session.input_audio.mute", "event_id": "m1"})
        events = await c.until("session.input_audio.muted")
        # frames for [0,100), [100,200), [200,300): each goes out once input reaches it
        assert [e["type"] for e in events].count("session.output_audio.delta") == 3
        assert all("event_id" not in e and "start_ms" not in e for e in events
                   if e["type"] == "session.output_audio.delta")
        # no input, no time: the track stands still
        await c.send({"type": "session.input_audio.unmute", "event_id": "u1"})
        assert kinds(await c.until("session.input_audio.unmuted")) == [
            "session.input_audio.unmuted"]
        assert c.output() == [bytes(4800)] * 3


async def test_the_model_stops_when_the_user_talks_over_it() -> None:
    async with SimServer() as sim, raw(sim) as c:
        await c.start(instructions=f"Say: {STORY}")
        await c.audio(SPEECH + bytes(48 * 800))
        while not any(e["type"] == "session.output_transcript.delta" for e in c.events):
            await c.audio(bytes(4800))
            await c.next()
        await c.audio(bytes(48 * 500))
        talk_over_ms = c.sent_ms
        await c.audio(SPEECH + bytes(48 * 2000))
        def answered() -> bool:  # the answer to the words spoken over the story (it again)
            return any(e["type"] == "session.output_transcript.delta"
                       and e["start_ms"] > talk_over_ms + 500 for e in c.events)
        for _ in range(300):
            if answered():
                break
            await c.audio(bytes(4800))
            with contextlib.suppress(TimeoutError):
                while True:
                    await asyncio.wait_for(c.next(), 0.2)
        await c.send({"type": "session.close"})
        await c.until("session.closed")
        first = [e for e in c.events if e["type"] == "session.output_transcript.delta"
                 and e["start_ms"] < talk_over_ms + 300]
        said = "".join(e["delta"] for e in first)
        assert said and STORY.startswith(said) and said != STORY  # it stopped mid-story
        # from the user's onset until the next reply, the track is silent
        frames = c.output()
        onset = talk_over_ms // 100 + 3  # within the VAD's 300 ms padding
        second = min(e["start_ms"] for e in c.events
                     if e["type"] == "session.output_transcript.delta"
                     and e["start_ms"] > talk_over_ms)
        assert all(f == bytes(4800) for f in frames[onset:second // 100])
        assert any(frames[second // 100:])


async def test_a_fixture_plays_mutes_the_input_and_refuses_appends() -> None:
    tone = b"".join(int(8000 * math.sin(i / 10)).to_bytes(2, "little", signed=True)
                    for i in range(24_000))  # 1 s
    async with SimServer() as sim, raw(sim) as c:
        await c.start()
        await c.send({"type": "session.output_audio.fixture.play", "event_id": "f1",
                      "audio": base64.b64encode(tone).decode()})
        assert (await c.next())["type"] == "session.output_audio.fixture.playing"
        await c.send({"type": "session.commentary.append", "content": "hello",
                      "delegation_id": None, "event_id": "c1"})
        error = (await c.until("error"))[-1]["error"]
        assert (error["code"], error["client_event_id"]) == ("fixture_active", "c1")
        await c.audio(SPEECH[:48_000] + bytes(4800))  # 1.1 s: spoken over the fixture
        played = await c.until("session.output_audio.fixture.played")
        assert played[-1]["client_event_id"] == "f1"
        assert sum(1 for f in c.output() if any(f)) == 10
        await c.audio(bytes(48 * 1000))
        await c.send({"type": "session.close"})
        await c.until("session.closed")
        assert "session.input_transcript.delta" not in kinds(c.events)  # nobody heard it


async def test_appends_are_placed_600_ms_of_timeline_later() -> None:
    async with SimServer() as sim, raw(sim) as c:
        await c.start()
        await c.audio(bytes(48 * 1000))
        await c.send({"type": "session.instructions.append", "event_id": "i1",
                      "content": "Speak German.", "delegation_id": None})
        await c.audio(bytes(48 * 550))
        await c.send({"type": "session.input_audio.mute", "event_id": "m1"})
        assert "session.instructions.appended" not in kinds(await c.until(
            "session.input_audio.muted"))
        await c.audio(bytes(48 * 50))
        placed = (await c.until("session.instructions.appended"))[-1]
        assert placed["client_event_id"] == "i1" and placed["start_ms"] == 1600
        assert placed["end_ms"] == placed["start_ms"]
        assert sim.live_sessions[0].session is not None
        assert sim.live_sessions[0].session["instructions"].endswith("Speak German.")
        # the 500-token cap
        await c.send({"type": "session.thinking.append", "content": "word " * 500,
                      "delegation_id": None, "event_id": "t1"})
        error = (await c.until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "content")


@pytest.mark.parametrize("session, code, param", [
    ({"audio": {"format": {"type": "audio/pcm", "rate": 16000}}}, "invalid_value",
     "session.audio.format"),
    ({"audio": {"output": {"voice": "nobody"}}}, "invalid_value", "session.audio.output.voice"),
    ({"delegation": {"type": "decisions", "decisions": {"model": "m", "questions": []}}},
     "invalid_value", "session.delegation.type"),
    ({"delegation": {"type": "responses", "responses": {}}}, "missing_required_parameter",
     "session.delegation.responses.model"),
    ({"client": {"data_channel": {}}}, "invalid_value", "session.client"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}]},
                {"role": "assistant", "content": []}]}, "invalid_value", "session.input[1]"),
    ({"audio": {"format": {"type": "audio/pcm", "rate": 24000, "x": 1}}}, "unknown_parameter",
     "session.audio.format.x"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a",
                                              "extra": 1}]}]},
     "unknown_parameter", "session.input[0].content[0].extra"),
    ({"model": None}, "missing_required_parameter", "session.model"),
])
async def test_session_start_refusals(session: dict[str, Any], code: str, param: str) -> None:
    async with SimServer() as sim, raw(sim) as c:
        await c.send({"type": "session.start", "event_id": "s1",
                      "session": {"model": "gpt-live-1", **session}}, check=False)
        error = (await c.next())["error"]
        assert (error["code"], error["param"], error["client_event_id"]) == (code, param, "s1")
        history = [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                   {"role": "assistant", "content": [{"type": "output_text", "text": "ho"}]}]
        started = await c.start(input=history)
        assert started["session"]["input"] == history


async def test_session_update_keeps_the_delegation_type() -> None:
    async with SimServer() as sim, raw(sim) as c:
        await c.start(delegation={"type": "client"})
        await c.send({"type": "session.update", "event_id": "u1", "session": {
            "delegation": {"type": "client", "acknowledgement_delay_ms": 800}}})
        updated = (await c.until("session.updated"))[-1]
        assert updated["client_event_id"] == "u1"
        assert updated["session"]["delegation"] == {"type": "client",
                                                    "acknowledgement_delay_ms": 800}
        for delegation in (None, {"type": "responses", "responses": {"model": "m"}}):
            await c.send({"type": "session.update", "session": {"delegation": delegation}})
            assert (await c.until("error"))[-1]["error"]["code"] == "immutable_field_update"
        await c.send({"type": "session.update", "session": {"instructions": "x"}}, check=False)
        error = (await c.until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("unknown_parameter", "session.instructions")
        for event in ({"type": "response.create"},
                      {"type": "response.item.create", "item": {"type": "message"}},
                      {"type": "decision.create", "event_id": "d1"}):
            await c.send(event, check=False)
            message = (await c.until("error"))[-1]["error"]["message"]
            assert "requires Responses delegation" in message or "Decisions" in message


async def test_expiry_at_an_input_position() -> None:
    async with SimServer(SimOptions(expire_at_input_ms=(1000,))) as sim, raw(sim) as c:
        await c.start()
        await c.audio(bytes(48 * 1200))
        closed = (await c.until("session.closed"))[-1]
        assert closed["reason"] == "expired" and closed["usage"]["seconds"] == 1


async def test_malformed_and_unknown_frames_on_request() -> None:
    async with SimServer(SimOptions(malformed_every=2, unknown_every=3)) as sim, raw(sim) as c:
        await c.start()
        await c.audio(bytes(48 * 500))
        frames = [await asyncio.wait_for(c.ws.recv(), TIMEOUT) for _ in range(7)]
        assert any(f.startswith('{"type": "session.output_audio.delta", "delta": 12')
                   for f in frames)
        assert any('"sim.unknown_event"' in f for f in frames)


def test_timed_pieces_join_back_and_sit_on_the_grid() -> None:
    text = "what is the weather like today"
    out = timed_pieces(text, 130, 2290)
    assert "".join(p for p, _, _ in out) == text
    assert out[0][1] == 0 and out[-1][2] == 2400
    assert all(s % GRID_MS == 0 and e % GRID_MS == 0 and s < e for _, s, e in out)
    assert timed_pieces("hi", 400, 400) == [("hi", 400, 600)]


# ------------------------------------------------------------------ the client tables


def test_the_client_events_the_simulator_knows_are_the_sdks() -> None:
    sdk = {kind_of(td): td for _, td in alternatives(client_event_param.ClientEventParam)}
    assert set(sdk) == set(live_fields.CLIENT_EVENTS)
    for kind, spec in live_fields.CLIENT_EVENTS.items():
        spec = {**spec}
        if kind in ("session.start", "session.update"):
            spec["session"] = None  # compared below
        assert list(_compare(spec, sdk[kind], kind)) == [], kind


def test_the_session_fields_the_simulator_knows_are_the_sdks() -> None:
    start = {**live_fields.SESSION, "input": None}  # history items: three shapes, below
    # the backend's hosted tools (web_search, mcp, ...) are not looked into: only functions
    hosted = "responses.tools[]: kinds ['function'] != SDK"
    for table, sdk in ((start, session_config_param.SessionConfigParam),
                       (live_fields.SESSION_UPDATE, update_param.SessionUpdateConfigParam)):
        diffs = list(_compare(table, sdk, "session"))
        assert [d for d in diffs if hosted not in d] == [] and len(diffs) == 1
    from openai.types.live import initial_item_param
    for shape in (initial_item_param.Developer, initial_item_param.User,
                  initial_item_param.Assistant):
        assert list(_compare({**live_fields.INITIAL_ITEM, "content": None}, shape,
                             "item")) == [], shape


def test_unknown_field_names_the_dotted_path() -> None:
    ev = {"type": "session.start", "session": {"model": "m", "delegation": {
        "type": "responses", "responses": {"model": "m", "tools": [
            {"type": "function", "name": "a", "parameters": {}},
            {"type": "web_search", "anything": 1},
            {"type": "function", "name": "b", "strict": True, "nope": 1}]}}}}
    assert unknown_field(ev, live_fields.CLIENT_EVENTS["session.start"], "") == \
        "session.delegation.responses.tools[2].nope"
