"""`voiced sim` on ``/v1/live/sessions`` as the official SDK's GPT-Live client sees it.

The client is ``AsyncOpenAI(...).live.connect()`` pointed at the simulator with
``websocket_base_url``; it sends what its helpers send. Every server event is read raw,
validated strictly against the SDK's Live types (``tests/live_types``: a discriminated
union, strict types, no field the SDK does not declare, nothing sideband-only) and parsed
by the SDK's own parser into the same class; every client event the simulator received is
validated against the SDK's ``ClientEvent`` the same way. The microphone is a task that
streams 20 ms appends continuously, as a device must (the session is clocked by its input
audio), at four times real time: the simulator's timeline is the audio, not the clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import fastjsonschema
import pytest
from openai import AsyncOpenAI
from openai.resources.live.live import AsyncLiveConnection
from openai.types.responses import ResponseStreamEvent
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import QUESTION_WAV, TIMEOUT
from tests.live_types import strict, strict_client_event, strict_server_event, strict_union
from tests.test_sim_faults import voiced_sim
from voiced.audio.filebackend import read_wav_as_wire
from voiced.sim.live import ACKNOWLEDGEMENT
from voiced.sim.server import ManualClock, SimOptions, SimServer

SPEECH = read_wav_as_wire(QUESTION_WAV)  # "what's the weather like today?"
FRAME = 960  # 20 ms
PCM24 = {"type": "audio/pcm", "rate": 24000}
RESPONSES_EVENT = strict_union(ResponseStreamEvent)


def ms(events: list[Any]) -> int:
    return sum(len(base64.b64decode(e.delta)) for e in events
               if e.type == "session.output_audio.delta") // 48


class Driver:
    """An SDK connection whose every server event is checked as it arrives, and a mic."""

    def __init__(self, conn: AsyncLiveConnection) -> None:
        self.conn = conn
        self.events: list[Any] = []
        self.input_bytes = 0
        self._audio: asyncio.Queue[bytes] = asyncio.Queue()
        self._mic = asyncio.get_running_loop().create_task(self._stream())

    async def _stream(self) -> None:
        """20 ms appends at 4x real time, for good: queued speech, else silence."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                pcm = self._audio.get_nowait() if not self._audio.empty() else bytes(FRAME)
                await self.conn.session.input_audio.append(
                    audio=base64.b64encode(pcm).decode())
                self.input_bytes += len(pcm)
                await asyncio.sleep(0.005)

    def say(self, pcm: bytes = SPEECH) -> None:
        for i in range(0, len(pcm), FRAME):
            self._audio.put_nowait(pcm[i:i + FRAME].ljust(FRAME, b"\0"))

    async def stop_mic(self) -> None:
        self._mic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._mic

    async def next(self) -> Any:
        raw = await asyncio.wait_for(self.conn.recv_bytes(), TIMEOUT)
        event = strict_server_event(raw)
        parsed = self.conn.parse_event(raw)  # what an application gets from the SDK
        assert type(parsed) is type(event), (type(parsed), type(event))
        if event.type == "response.event":  # the backend's own stream, held to its types
            strict(RESPONSES_EVENT, json.dumps(event.event))
        self.events.append(event)
        return event

    async def until(self, kind: str, where: Callable[[Any], bool] = lambda e: True
                    ) -> list[Any]:
        """The events up to and including the next ``kind`` that ``where`` accepts."""
        start = len(self.events)
        while True:
            event = await self.next()
            if event.type == kind and where(event):
                return self.events[start:]


@contextlib.asynccontextmanager
async def live(sim: SimServer, **session: Any) -> AsyncIterator[Driver]:
    """The SDK connected to ``ws://…/v1``, the session started, the mic streaming."""
    client = AsyncOpenAI(api_key="sk-sim", websocket_base_url=f"ws://127.0.0.1:{sim.port}/v1")
    try:
        async with client.live.connect() as conn:
            await conn.session.start(session={"model": "gpt-live-1", **session},
                                     event_id="start-1")
            d = Driver(conn)
            try:
                assert (await d.next()).type == "session.started"
                yield d
            finally:
                await d.stop_mic()
    finally:
        await client.close()
    for s in sim.live_sessions:  # what the SDK sent, every event of it
        for event in s.received:
            strict_client_event(event)


def kinds(events: list[Any]) -> list[str]:
    return [e.type for e in events if e.type != "session.output_audio.delta"]


def text(events: list[Any], kind: str) -> str:
    return "".join(e.delta for e in events if e.type == kind)


def check_fragments(events: list[Any], kind: str) -> None:
    """Transcript fragments: unique ids, on the 200 ms grid, in timeline order."""
    mine = [e for e in events if e.type == kind]
    assert mine
    assert len({e.event_id for e in mine}) == len(mine)
    for e in mine:
        assert e.start_ms % 200 == 0 and e.end_ms % 200 == 0 and e.start_ms < e.end_ms
    starts = [e.start_ms for e in mine]
    assert starts == sorted(starts)


async def test_a_spoken_exchange_and_close() -> None:
    clock = ManualClock(1_800_000_000.0)
    async with SimServer(SimOptions(max_session_s=1800), clock=clock) as sim, live(
            sim, instructions="Be brief.",
            audio={"format": PCM24, "output": {"voice": "cedar"}}) as d:
        started = d.events[0]
        assert started.client_event_id == "start-1"
        s = started.session
        assert s.id.startswith("live_") and s.status == "active" and s.model == "gpt-live-1"
        assert s.expires_at == 1_800_001_800  # from the simulator's clock
        assert s.audio.format.type == "audio/pcm" and s.audio.format.rate == 24000
        assert s.audio.output.voice == "cedar" and s.delegation.type == "client"
        assert s.input == [] and s.instructions == "Be brief."
        d.say()
        events = await d.until("session.output_transcript.delta")
        user = text(d.events, "session.input_transcript.delta")
        while text(d.events, "session.output_transcript.delta") != f"You said: {user}":
            events.append(await d.next())
        check_fragments(d.events, "session.input_transcript.delta")
        check_fragments(d.events, "session.output_transcript.delta")
        assert "weather" in user.split()
        # the model answers after the user fell silent, on the same timeline
        assert min(e.start_ms for e in events if e.type == "session.output_transcript.delta"
                   ) >= max(e.end_ms for e in events if e.type == "session.input_transcript"
                            ".delta") - 200
        audio = [base64.b64decode(e.delta) for e in d.events
                 if e.type == "session.output_audio.delta"]
        assert all(len(a) == 4800 for a in audio)  # 100 ms each
        assert any(a == bytes(4800) for a in audio)  # zeros while the model is quiet
        assert sum(1 for a in audio if any(a)) >= 10  # a second of speech at least
        # output audio only as input time advances (one 100 ms frame ahead at most)
        assert ms(d.events) <= d.input_bytes // 48 + 100
        await d.stop_mic()
        await d.conn.session.close(event_id="close-1")
        closed = (await d.until("session.closed"))[-1]
        assert closed.reason == "close_requested" and closed.client_event_id == "close-1"
        assert closed.usage.seconds == int(sim.live_sessions[0].input_ms // 1000)
        assert closed.session.id == s.id and closed.session.status == "active"
        with pytest.raises(ConnectionClosed) as end:
            await d.conn.recv_bytes()
        assert end.value.rcvd is not None and end.value.rcvd.code == 1000


async def test_mute_and_unmute() -> None:
    async with SimServer() as sim, live(sim) as d:
        await d.conn.session.input_audio.mute(event_id="m1")
        muted = (await d.until("session.input_audio.muted"))[-1]
        assert muted.client_event_id == "m1"
        d.say()  # the model hears silence while muted
        d.say(bytes(48_000 * 2))
        while not d._audio.empty():
            await d.next()
        await d.conn.session.input_audio.unmute(event_id="u1")
        unmuted = await d.until("session.input_audio.unmuted")
        assert unmuted[-1].client_event_id == "u1"
        assert "session.input_transcript.delta" not in kinds(d.events)
        d.say()
        await d.until("session.input_transcript.delta", lambda e: "weather" in e.delta)


async def test_a_client_delegation_answered_with_commentary() -> None:
    async with SimServer() as sim, live(
            sim, instructions="You are a kitchen assistant.\nDelegate: weather",
            delegation={"type": "client", "acknowledgement_delay_ms": 0}) as d:
        d.say()
        created = (await d.until("session.delegation.created"))[-1]
        assert created.delegation.target == "client" and created.delegation.type == "delegation"
        assert created.delegation.id.startswith("item_") and created.offset_ms % 200 == 0
        assert created.delegation.response_id is None
        # the automatic acknowledgement (delay 0) while the app works
        await d.until("session.output_transcript.delta",
                      lambda e: ACKNOWLEDGEMENT.endswith(e.delta.strip()))
        await d.conn.session.commentary.append(content="It is sunny in Paris.",
                                               delegation_id=created.delegation.id,
                                               event_id="c7")
        placed = (await d.until("session.commentary.appended"))[-1]
        assert placed.client_event_id == "c7" and placed.start_ms % 200 == 0
        assert placed.start_ms >= created.offset_ms
        await d.until("session.output_transcript.delta", lambda e: "Paris" in e.delta)
        said = text(d.events, "session.output_transcript.delta")
        assert said.endswith("It is sunny in Paris.")
        # an unknown delegation is refused with the id it came with
        await d.conn.session.commentary.append(content="x", delegation_id="item_nope",
                                               event_id="c8")
        error = (await d.until("error"))[-1]
        assert (error.error.code, error.error.param, error.error.client_event_id) == (
            "invalid_value", "delegation_id", "c8")


async def test_a_responses_delegation_calls_a_function() -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
              "properties": {"city": {"type": "string"},
                             "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
    delegation = {"type": "responses", "responses": {
        "model": "gpt-5-mini", "instructions": "Use weather for forecasts.",
        "tools": [{"type": "function", "name": "weather", "description": "A forecast.",
                   "parameters": schema, "strict": True}]}}
    async with SimServer() as sim, live(sim, delegation=delegation) as d:
        d.say()
        created = (await d.until("session.delegation.created"))[-1]
        assert created.delegation.target == "responses"
        done = (await d.until("response.event",
                              lambda e: e.event["type"] == "response.completed"))
        backend = [e.event for e in done if e.type == "response.event"]
        assert backend[0]["response"]["id"] == created.delegation.response_id
        assert all(e.delegation_id == created.delegation.id
                   for e in done if e.type == "response.event")
        assert [e["type"] for e in backend] == ["response.created",
                                                "response.output_item.done",
                                                "response.completed"]
        call = backend[1]["item"]
        assert call["type"] == "function_call" and call["name"] == "weather"
        fastjsonschema.compile(schema)(json.loads(call["arguments"]))
        # a function call's output, then the continuation: the voice model speaks it
        await d.conn.response.item.create(item={"type": "function_call_output",
                                                "call_id": call["call_id"],
                                                "output": '{"sky": "sunny"}'})
        await d.conn.response.create()
        answer = await d.until("response.event",
                               lambda e: e.event["type"] == "response.completed")
        message = [e.event for e in answer if e.type == "response.event"][1]["item"]
        assert message["content"][0]["text"] == 'The weather tool says: {"sky": "sunny"}'
        await d.until("session.output_transcript.delta", lambda e: "sunny" in e.delta)
        # a delegation id is not for Responses delegation
        await d.conn.session.commentary.append(content="x", delegation_id="item_1")
        assert (await d.until("error"))[-1].error.param == "delegation_id"


async def test_usage_every_15_s_of_timeline_and_at_close() -> None:
    async with SimServer() as sim, live(sim) as d:
        updates = await d.until("session.usage.updated")
        assert updates[-1].usage.seconds == 15
        assert 0 <= updates[-1].context_window.usage_ratio < 1
        # the output track kept pace with it (its next frame goes out as input reaches it)
        assert ms(d.events) == 15_100
        await d.until("session.usage.updated")
        await d.stop_mic()
        await d.conn.session.close()
        closed = (await d.until("session.closed"))[-1]
        assert closed.usage.seconds >= 30 and closed.client_event_id is None


async def test_expiry_at_expires_at_on_the_simulators_clock() -> None:
    clock = ManualClock(1_800_000_000.0)
    async with SimServer(SimOptions(max_session_s=600), clock=clock) as sim, live(sim) as d:
        expires = d.events[0].session.expires_at
        clock.advance_to(expires - 1)
        await d.until("session.output_audio.delta")
        assert "session.closed" not in kinds(d.events)
        clock.advance_to(expires)
        closed = (await d.until("session.closed"))[-1]
        assert closed.reason == "expired" and closed.usage.seconds >= 0


async def test_errors_before_start_for_unknown_types_and_fields() -> None:
    async with SimServer() as sim:
        client = AsyncOpenAI(api_key="sk-sim",
                             websocket_base_url=f"ws://127.0.0.1:{sim.port}/v1")
        async with client.live.connect() as conn:
            d = Driver.__new__(Driver)
            d.conn, d.events = conn, []
            await conn.session.input_audio.mute(event_id="m0")  # before session.start
            error = (await d.until("error"))[-1].error
            assert (error.code, error.client_event_id) == ("session_not_started", "m0")
            await conn.send({"type": "session.start", "session": {
                "model": "gpt-live-1", "audio": {"output": {"voice": "marin", "speed": 1.2}}}})
            error = (await d.until("error"))[-1].error
            assert (error.code, error.param) == ("unknown_parameter",
                                                 "session.audio.output.speed")
            await conn.session.start(session={"model": "gpt-live-1"})
            await d.until("session.started")
            await conn.send({"type": "session.input_audio.commit"})
            error = (await d.until("error"))[-1].error
            assert error.code == "invalid_value" and error.param == "type"
            assert "session.input_audio.append" in error.message  # the accepted types
        await client.close()
    assert kinds(d.events) == ["error", "error", "session.started", "error"]


async def test_unplaced_context_is_reported_at_close() -> None:
    async with SimServer() as sim, live(sim) as d:
        await d.stop_mic()  # the timeline stands still: nothing can be placed
        await d.conn.session.thinking.append(content="The user likes tea.",
                                             delegation_id=None, event_id="t1")
        await d.conn.session.close(event_id="close-1")
        events = await d.until("session.closed")
        error = [e for e in events if e.type == "error"]
        assert [e.error.code for e in error] == ["context_injection_incomplete"]
        assert error[0].error.client_event_id == "t1"
        assert kinds(events)[-1] == "session.closed"


async def test_faults_drop_mid_reply_and_refused_connections() -> None:
    async with SimServer(SimOptions(drop_mid_response=1)) as sim, live(sim) as d:
        d.say()
        with pytest.raises(ConnectionClosed) as dropped:
            while True:
                await d.next()
        assert dropped.value.rcvd is None  # no close frame: a network drop
        said = text(d.events, "session.output_transcript.delta")
        whole = f"You said: {text(d.events, 'session.input_transcript.delta')}"
        assert said and whole.startswith(said) and said != whole  # cut halfway
    async with SimServer() as sim:
        sim.refuse_connections = True
        client = AsyncOpenAI(api_key="sk-sim",
                             websocket_base_url=f"ws://127.0.0.1:{sim.port}/v1")
        with pytest.raises(InvalidStatus) as refused:
            async with client.live.connect():
                pass
        assert refused.value.response.status_code == 503
        await client.close()


async def test_expire_now_fault() -> None:
    async with SimServer() as sim, live(sim) as d:
        sim.expire_sessions()
        assert (await d.until("session.closed"))[-1].reason == "expired"


async def test_the_voiced_sim_command_serves_live_beside_realtime() -> None:
    async with voiced_sim() as (port, _):
        client = AsyncOpenAI(api_key="sk-sim", websocket_base_url=f"ws://127.0.0.1:{port}/v1")
        try:
            async with client.live.connect() as conn:
                await conn.session.start(session={"model": "gpt-live-1.1"})
                started = strict_server_event(
                    await asyncio.wait_for(conn.recv_bytes(), TIMEOUT))
                assert started.type == "session.started"
                assert started.session.model == "gpt-live-1.1"
            async with client.realtime.connect(model="gpt-realtime-2.1") as rt:
                created = json.loads(await asyncio.wait_for(rt.recv_bytes(), TIMEOUT))
                assert created["type"] == "session.created"
        finally:
            await client.close()

