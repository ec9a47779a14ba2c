"""`voiced sim` as the official `openai` SDK's realtime client sees it.

The client is ``AsyncOpenAI(...).realtime.connect()``, pointed at the simulator with
``websocket_base_url``; it sends what it sends, shaped by its own params. Every server
event is read raw, validated strictly against the SDK's GA types (``tests/ga_types``:
a discriminated union, strict types, and no field the SDK does not declare), and parsed
by the SDK's own parser into the same class. The tests then hold the order and content
of the events to upstream's.
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
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from tests.conftest import QUESTION_WAV, TIMEOUT
from tests.ga_types import strict_event
from tests.test_sim_faults import voiced_sim
from voiced.audio.filebackend import read_wav_as_wire
from voiced.sim.server import SimOptions, SimServer

SPEECH = read_wav_as_wire(QUESTION_WAV)  # "what's the weather like today?"
SILENCE = bytes(24000 * 2)  # 1 s
TRANSCRIBE = {"model": "gpt-4o-mini-transcribe"}
VAD = {"type": "server_vad", "silence_duration_ms": 400}
STORY = ("Once upon a time there was a little robot who lived in a lighthouse by the sea, "
         "and every night it counted the ships that sailed past its window until morning.")


class Driver:
    """An SDK connection whose every server event is checked as it arrives."""

    def __init__(self, conn: AsyncRealtimeConnection) -> None:
        self.conn = conn
        self.events: list[Any] = []

    async def next(self) -> Any:
        raw = await asyncio.wait_for(self.conn.recv_bytes(), TIMEOUT)
        event = strict_event(raw)
        parsed = self.conn.parse_event(raw)  # what an application gets from the SDK
        assert type(parsed) is type(event), (type(parsed), type(event))
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

    async def speak(self, pcm: bytes = SPEECH + SILENCE) -> None:
        for i in range(0, len(pcm), 960):  # 20 ms appends, as a microphone sends them
            await self.conn.input_audio_buffer.append(
                audio=base64.b64encode(pcm[i:i + 960]).decode())


@contextlib.asynccontextmanager
async def sdk(url_base: str, **session: Any) -> AsyncIterator[Driver]:
    """The SDK connected to ``ws://…/v1``; ``session`` fields go in a session.update."""
    client = AsyncOpenAI(api_key="sk-sim", websocket_base_url=url_base)
    try:
        async with client.realtime.connect(model="gpt-realtime-2.1") as conn:
            d = Driver(conn)
            assert (await d.next()).type == "session.created"
            if session:
                await conn.session.update(session={"type": "realtime", **session})
                await d.until("session.updated")
            yield d
    finally:
        await client.close()


def base(sim: SimServer) -> str:
    return f"ws://127.0.0.1:{sim.port}/v1"


def kinds(events: list[Any]) -> list[str]:
    return [e.type for e in events]


def at(events: list[Any], kind: str, where: Callable[[Any], bool] = lambda e: True) -> int:
    """The index of the first ``kind`` event that ``where`` accepts."""
    return next(i for i, e in enumerate(events) if e.type == kind and where(e))


def in_order(events: list[Any], expected: list[str]) -> bool:
    """Whether ``expected`` occurs in ``events`` in this order (others in between)."""
    it = iter(kinds(events))
    return all(kind in it for kind in expected)


USER_TURN = ["input_audio_buffer.committed", "conversation.item.added",
             "conversation.item.done"]
SPOKEN_REPLY = ["response.created", "response.output_item.added", "conversation.item.added",
                "response.content_part.added", "response.output_audio.delta",
                "response.output_audio_transcript.delta", "response.output_audio.done",
                "response.output_audio_transcript.done", "response.content_part.done",
                "conversation.item.done", "response.output_item.done", "response.done",
                "rate_limits.updated"]


def check_transcript_order(events: list[Any], order: str, item_id: str) -> str:
    """The user's transcript of ``item_id``: deltas then completed, placed as ``order``
    says relative to the response to it; returns the transcript."""
    mine = [e for e in events if e.type.startswith("conversation.item.input_audio_"
                                                   "transcription") and e.item_id == item_id]
    assert [e.type.rsplit(".", 1)[1] for e in mine][-1] == "completed"
    assert all(e.type.endswith(".delta") for e in mine[:-1]) and len(mine) > 1
    completed = mine[-1]
    assert "".join(e.delta for e in mine[:-1]) == completed.transcript
    done_at = events.index(completed)
    if order == "late":  # upstream's usual: the reply is under way before the words
        assert done_at > at(events, "response.output_audio.delta")
    else:
        assert done_at < at(events, "response.created")
    return str(completed.transcript)


def check_reply(events: list[Any], user_id: str) -> Any:
    """A whole spoken reply after the user's item; returns its response.done."""
    reply = events[at(events, "response.created"):]
    assert in_order(reply, SPOKEN_REPLY), kinds(reply)
    added = reply[at(reply, "conversation.item.added")]
    done = reply[at(reply, "conversation.item.done")]
    assert added.item.role == "assistant" and done.item.id == added.item.id
    assert added.previous_item_id == done.previous_item_id == user_id
    words = "".join(e.delta for e in reply if e.type == "response.output_audio_transcript.delta")
    said = reply[at(reply, "response.output_audio_transcript.done")].transcript
    assert words == said and done.item.content[0].transcript == said
    audio = b"".join(base64.b64decode(e.delta) for e in reply
                     if e.type == "response.output_audio.delta")
    assert len(audio) > 24000  # more than half a second of speech
    finished = reply[at(reply, "response.done")].response
    assert finished.status == "completed" and finished.usage.total_tokens > 0
    assert [o.id for o in finished.output] == [added.item.id]
    return finished


@pytest.mark.parametrize("order", ["late", "early"])
async def test_a_spoken_server_vad_turn(order: str) -> None:
    async with SimServer(SimOptions(pace=8, user_transcript=order)) as sim, sdk(
            base(sim), audio={"input": {"transcription": TRANSCRIBE, "turn_detection": VAD}}
    ) as d:
        await d.speak()
        events = await d.until("rate_limits.updated")
        assert in_order(events, ["input_audio_buffer.speech_started",
                                 "input_audio_buffer.speech_stopped", *USER_TURN,
                                 *SPOKEN_REPLY])
        started = events[at(events, "input_audio_buffer.speech_started")]
        stopped = events[at(events, "input_audio_buffer.speech_stopped")]
        committed = events[at(events, "input_audio_buffer.committed")]
        user = events[at(events, "conversation.item.added")].item
        assert started.item_id == stopped.item_id == committed.item_id == user.id
        assert committed.previous_item_id is None and user.role == "user"
        assert 0 <= started.audio_start_ms < stopped.audio_end_ms <= len(SPEECH) / 48 + 1000
        heard = check_transcript_order(events, order, user.id)
        assert "weather" in heard.split()  # recognised, not a placeholder
        finished = check_reply(events, user.id)
        assert finished.output[0].content[0].transcript == f"You said: {heard}"


@pytest.mark.parametrize("order", ["late", "early"])
async def test_a_manual_commit_turn(order: str) -> None:
    async with SimServer(SimOptions(pace=8, user_transcript=order)) as sim, sdk(
            base(sim), audio={"input": {"transcription": TRANSCRIBE, "turn_detection": None}}
    ) as d:
        await d.speak(SPEECH)
        await d.conn.input_audio_buffer.commit()
        await d.conn.response.create()
        events = await d.until("rate_limits.updated")
        assert not any(k.startswith("input_audio_buffer.speech") for k in kinds(events))
        assert in_order(events, [*USER_TURN, *SPOKEN_REPLY])
        user = events[at(events, "conversation.item.added")].item
        heard = check_transcript_order(events, order, user.id)
        assert "weather" in heard.split()
        check_reply(events, user.id)
        # a buffer under 100 ms is refused, as upstream does
        await d.conn.input_audio_buffer.append(audio=base64.b64encode(bytes(960)).decode())
        await d.conn.input_audio_buffer.commit()
        error = (await d.until("error"))[-1].error
        assert error.code == "input_audio_buffer_commit_empty"


async def cancelled_story(d: Driver) -> tuple[list[Any], str]:
    """Ask for a long reply and cancel it at its first audio; returns the events up to
    its rate_limits.updated and the user item's id."""
    await d.conn.conversation.item.create(item={
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "tell me a story"}]})
    user = (await d.until("conversation.item.done"))[-1].item.id
    await d.conn.response.create(response={"instructions": f"Say: {STORY}"})
    await d.until("response.output_audio.delta")
    await d.conn.response.cancel()
    return await d.until("rate_limits.updated"), user


async def test_cancel_while_the_reply_streams_closes_what_it_started() -> None:
    # pace 1: the story takes seconds to stream; the cancel is one round trip behind
    async with SimServer(SimOptions(pace=1)) as sim, sdk(base(sim)) as d:
        events, user = await cancelled_story(d)
        cut = events[at(events, "response.output_audio.done"):]
        assert kinds(cut) == ["response.output_audio.done",
                              "response.output_audio_transcript.done",
                              "response.content_part.done", "conversation.item.done",
                              "response.output_item.done", "response.done",
                              "rate_limits.updated"]
        heard = "".join(e.delta for e in d.events
                        if e.type == "response.output_audio_transcript.delta")
        assert cut[1].transcript == heard and STORY.startswith(heard) and heard != STORY
        assert cut[2].part.transcript == heard
        assert cut[3].item.status == "incomplete" and cut[3].previous_item_id == user
        assert cut[4].item.status == "incomplete"
        done = cut[5].response
        assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
        assert done.output[0].content[0].transcript == heard
        # nothing is streaming any more: a second cancel is refused as upstream does
        await d.conn.response.cancel()
        error = (await d.until("error"))[-1].error
        assert error.code == "response_cancel_not_active"


async def test_truncate_an_assistant_item_at_what_was_heard() -> None:
    async with SimServer(SimOptions(pace=1)) as sim, sdk(base(sim)) as d:
        events, user = await cancelled_story(d)
        item = events[at(events, "conversation.item.done")].item.id
        received_ms = sum(len(base64.b64decode(e.delta)) for e in d.events
                          if e.type == "response.output_audio.delta") // 48
        await d.conn.conversation.item.truncate(item_id=item, content_index=0,
                                                audio_end_ms=received_ms // 2)
        truncated = (await d.until("conversation.item.truncated"))[-1]
        assert (truncated.item_id, truncated.audio_end_ms) == (item, received_ms // 2)
        for item_id, end, code, param in (
                (item, received_ms + 1000, "invalid_value", "audio_end_ms"),
                (user, 0, "invalid_value", "item_id"),  # only assistant messages
                ("item_nope", 0, "item_truncate_invalid_item_id", "item_id")):
            await d.conn.conversation.item.truncate(item_id=item_id, content_index=0,
                                                    audio_end_ms=end)
            error = (await d.until("error"))[-1].error
            assert (error.code, error.param) == (code, param), item_id


async def test_a_tool_call_with_required_arguments() -> None:
    schema = {"type": "object", "additionalProperties": False,
              "required": ["city", "unit", "days"],
              "properties": {"city": {"type": "string"},
                             "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                             "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
    tools = [{"type": "function", "name": "weather", "description": "The weather forecast.",
              "parameters": schema}]
    async with SimServer(SimOptions(pace=8)) as sim, sdk(
            base(sim), tools=tools, tool_choice="auto",
            audio={"input": {"transcription": TRANSCRIBE, "turn_detection": VAD}}) as d:
        await d.speak()  # "... weather ...": the simulated model calls the tool
        events = await d.until("rate_limits.updated")
        call = events[at(events, "response.created"):]
        assert in_order(call, ["response.created", "response.output_item.added",
                               "conversation.item.added",
                               "response.function_call_arguments.delta",
                               "response.function_call_arguments.done",
                               "conversation.item.done", "response.output_item.done",
                               "response.done", "rate_limits.updated"])
        assert not any("audio" in k for k in kinds(call) if k.startswith("response."))
        done = call[at(call, "response.function_call_arguments.done")]
        pieces = "".join(e.delta for e in call
                         if e.type == "response.function_call_arguments.delta")
        assert done.name == "weather" and pieces == done.arguments
        arguments = json.loads(done.arguments)
        fastjsonschema.compile(schema)(arguments)  # what a real model must send
        item = call[at(call, "response.output_item.done")].item
        assert (item.type, item.status, item.call_id) == ("function_call", "completed",
                                                          done.call_id)
        await d.conn.conversation.item.create(item={
            "type": "function_call_output", "call_id": done.call_id,
            "output": json.dumps({"sky": "sunny", "city": arguments["city"]})})
        output_item = (await d.until("conversation.item.done"))[-1]
        assert output_item.previous_item_id == item.id
        await d.conn.response.create()
        reply = await d.until("rate_limits.updated")
        said = reply[at(reply, "response.output_audio_transcript.done")].transcript
        assert "The weather tool says" in said and "sunny" in said


async def test_text_only_responses() -> None:
    async with SimServer(SimOptions(pace=8)) as sim, sdk(
            base(sim), output_modalities=["text"]) as d:
        await d.conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "hello there"}]})
        await d.conn.response.create()
        events = await d.until("rate_limits.updated")
        reply = events[at(events, "response.created"):]
        assert in_order(reply, ["response.created", "response.output_item.added",
                                "conversation.item.added", "response.content_part.added",
                                "response.output_text.delta", "response.output_text.done",
                                "response.content_part.done", "conversation.item.done",
                                "response.output_item.done", "response.done"])
        assert not any("audio" in k for k in kinds(reply))
        text = "".join(e.delta for e in reply if e.type == "response.output_text.delta")
        assert text == reply[at(reply, "response.output_text.done")].text == \
            "You said: hello there"
        assert reply[at(reply, "response.content_part.added")].part.type == "text"
        item = reply[at(reply, "conversation.item.done")].item
        assert item.content[0].type == "output_text" and item.content[0].text == text
        assert reply[at(reply, "response.done")].response.output_modalities == ["text"]


async def test_an_out_of_band_response_leaves_the_conversation_alone() -> None:
    async with SimServer(SimOptions(pace=8)) as sim, sdk(base(sim)) as d:
        await d.conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "first words"}]})
        user = (await d.until("conversation.item.done"))[-1].item.id
        for params, said in (
                ({"input": [{"type": "message", "role": "user",
                             "content": [{"type": "input_text", "text": "other words"}]}]},
                 "You said: other words"),
                ({"input": [{"type": "item_reference", "id": user}],
                  "instructions": "Be brief.\nSay: a summary"}, "a summary")):
            await d.conn.response.create(response={
                "conversation": "none", "output_modalities": ["text"],
                "metadata": {"purpose": "summary"}, **params})
            events = await d.until("rate_limits.updated")
            created = events[at(events, "response.created")].response
            done = events[at(events, "response.done")].response
            assert created.conversation_id is None and done.conversation_id is None
            assert created.metadata == done.metadata == {"purpose": "summary"}
            assert not any(k.startswith("conversation.item") for k in kinds(events))
            assert events[at(events, "response.output_text.done")].text == said
        # the default response still answers the conversation, whose last item is the
        # user's: nothing of the out-of-band responses joined it
        await d.conn.response.create(response={"output_modalities": ["text"]})
        events = await d.until("rate_limits.updated")
        added = events[at(events, "conversation.item.added")]
        assert added.previous_item_id == user
        assert events[at(events, "response.output_text.done")].text == "You said: first words"
        assert events[at(events, "response.done")].response.metadata is None


async def test_unknown_session_fields_are_refused_like_upstream() -> None:
    async with SimServer(SimOptions(pace=8)) as sim, sdk(base(sim)) as d:
        for session, param in (
                ({"audio": {"input": {"turn_detection": {"type": "server_vad",
                                                         "silence_ms": 300}}}},
                 "session.audio.input.turn_detection.silence_ms"),
                ({"temperature": 0.8}, "session.temperature"),  # a beta field
                ({"tools": [{"type": "function", "name": "f", "strict": True}]},
                 "session.tools[0].strict")):
            await d.conn.session.update(session={"type": "realtime", **session})
            error = (await d.until("error"))[-1].error
            assert (error.code, error.param) == ("unknown_parameter", param)
        await d.conn.session.update(session={"type": "realtime", "instructions": "Hi."})
        updated = (await d.until("session.updated"))[-1].session
        # nothing of the refused updates was applied
        assert updated.instructions == "Hi." and updated.tools == []
        assert updated.audio.input.turn_detection.silence_duration_ms == 200


async def test_speech_during_a_reply_without_interrupt_response() -> None:
    """interrupt_response false: the reply goes on, the user's turn is committed, and
    its answer comes after the reply, never beside it; a cancel still cancels."""
    td = {**VAD, "interrupt_response": False}
    async with SimServer(SimOptions(pace=1)) as sim, sdk(
            base(sim), audio={"input": {"transcription": TRANSCRIBE, "turn_detection": td}}
    ) as d:
        await d.conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "tell me a story"}]})
        await d.conn.response.create(response={"instructions": f"Say: {STORY}"})
        first = (await d.until("response.created"))[-1].response.id
        await d.until("response.output_audio.delta")
        await d.speak()
        spoken = await d.until("input_audio_buffer.committed")
        assert "input_audio_buffer.speech_started" in kinds(spoken)
        assert "response.done" not in kinds(spoken)  # not interrupted by the speech
        await d.conn.response.cancel()  # the story is still streaming: this cancels it
        events = await d.until("response.done", lambda e: e.response.id != first)
        cancelled = events[at(events, "response.done")].response
        assert (cancelled.id, cancelled.status) == (first, "cancelled")
        created = [e.response.id for e in d.events if e.type == "response.created"]
        assert len(created) == 2 and created[0] == first
        # the second response started only after the first was done
        assert at(d.events, "response.created", lambda e: e.response.id != first) > \
            at(d.events, "response.done", lambda e: e.response.id == first)
        assert all(e.response_id == first for e in d.events[:at(
            d.events, "response.done", lambda e: e.response.id == first)]
            if e.type == "response.output_audio.delta")
        answer = events[-1].response
        assert answer.status == "completed"
        assert answer.output[0].content[0].transcript.startswith("You said:")
        assert "weather" in answer.output[0].content[0].transcript


async def test_idle_timeout_prompts_the_user() -> None:
    td = {**VAD, "idle_timeout_ms": 1000}
    async with SimServer(SimOptions(pace=8)) as sim, sdk(
            base(sim), audio={"input": {"turn_detection": td}}) as d:
        await d.speak(SILENCE + SILENCE[:24000])  # 1.5 s of silence, no speech
        events = await d.until("rate_limits.updated")
        assert in_order(events, ["input_audio_buffer.timeout_triggered", *USER_TURN,
                                 *SPOKEN_REPLY])
        timeout = events[at(events, "input_audio_buffer.timeout_triggered")]
        assert timeout.audio_start_ms == 0 and 1000 <= timeout.audio_end_ms <= 1010
        assert events[at(events, "input_audio_buffer.committed")].item_id == timeout.item_id
        said = events[at(events, "response.output_audio_transcript.done")].transcript
        assert said == "Are you still there?"
        assert "input_audio_buffer.speech_started" not in kinds(events)


async def test_a_failed_transcription_is_reported_and_the_reply_still_comes() -> None:
    async with SimServer(SimOptions(pace=8)) as sim, sdk(
            base(sim), audio={"input": {"transcription": TRANSCRIBE, "turn_detection": VAD}}
    ) as d:
        sim.fail_next_transcriptions(1)
        await d.speak()
        events = await d.until("rate_limits.updated")
        user = events[at(events, "conversation.item.added")].item.id
        failed = events[at(events, "conversation.item.input_audio_transcription.failed")]
        assert failed.item_id == user and failed.error.code == "audio_unintelligible"
        assert not any(k.endswith("transcription.completed") for k in kinds(events))
        assert events[at(events, "response.done")].response.status == "completed"
        await d.speak()  # the next turn is transcribed again
        events = await d.until("rate_limits.updated")
        assert "conversation.item.input_audio_transcription.completed" in kinds(events)


async def test_the_voiced_sim_command_holds_a_spoken_turn_with_the_sdk() -> None:
    async with voiced_sim("--pace", "8") as (port, _), sdk(
            f"ws://127.0.0.1:{port}/v1",
            audio={"input": {"transcription": TRANSCRIBE, "turn_detection": VAD}}) as d:
        await d.speak()
        events = await d.until("rate_limits.updated")
        user = events[at(events, "conversation.item.added")].item.id
        assert "weather" in check_transcript_order(events, "late", user).split()
        check_reply(events, user)


async def test_openai_agents_calls_a_tool_with_required_arguments() -> None:
    """The Agents SDK's realtime runner against the simulator (optional: openai-agents
    is not a dependency; ``uv pip install 'openai-agents[realtime]'`` to run this)."""
    realtime = pytest.importorskip("agents.realtime")
    from agents import function_tool

    calls: list[tuple[str, str]] = []

    @function_tool
    def weather(city: str, unit: str) -> str:
        """The weather in a city."""
        calls.append((city, unit))
        return f"sunny in {city}"

    agent = realtime.RealtimeAgent(name="assistant", instructions="Be brief.", tools=[weather])
    runner = realtime.RealtimeRunner(agent, config={"model_settings": {
        "model_name": "gpt-realtime-2.1", "turn_detection": VAD,
        "input_audio_transcription": TRANSCRIBE}})
    async with SimServer(SimOptions(pace=8)) as sim:
        session = await runner.run(model_config={
            "url": f"{sim.url}?model=gpt-realtime-2.1", "api_key": "sk-sim"})
        done: list[dict[str, Any]] = []
        async with session:
            pcm = SPEECH + SILENCE
            for i in range(0, len(pcm), 960):
                await session.send_audio(pcm[i:i + 960])

            async def until_two_responses() -> None:
                async for ev in session:
                    if ev.type == "error":
                        raise AssertionError(ev.error)
                    raw = getattr(ev, "data", None)
                    if getattr(raw, "type", "") == "raw_server_event":
                        strict_event(raw.data)
                        if raw.data["type"] == "response.done":
                            done.append(raw.data["response"])
                            if len(done) == 2:
                                return
            await asyncio.wait_for(until_two_responses(), TIMEOUT)
        assert not any(e["type"] == "error" for e in sim.sessions[0].sent)
    assert calls and all(calls[0])  # the tool ran with both required arguments
    assert [o["type"] for o in done[0]["output"]] == ["function_call"]
    assert "sunny" in done[1]["output"][0]["content"][0]["transcript"]
