"""Which tool a client delegation asks for (voiced/live/intents.py), and the assembly of
transcript fragments into segments (voiced/live/transcripts.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voiced.live import intents
from voiced.live.transcripts import Assembler

EMPTY: dict[str, Any] = {"type": "object", "properties": {}}


def tool(name: str, parameters: dict[str, Any] | None = None) -> Any:
    return {"type": "function", "name": name, "description": "",
            "parameters": EMPTY if parameters is None else parameters}


BUILTINS = [tool("get_time"), tool("set_volume", {"type": "object", "required": ["action"],
                                                  "properties": {}}),
            tool("mute_microphone"), tool("end_conversation"), tool("device_status")]


def pick(words: str, tools: list[Any] = BUILTINS, **keywords: list[str]
         ) -> tuple[str, dict[str, Any]] | None:
    found = intents.match(intents.intents_for(tools, keywords or None), words)
    return None if found is None else (found.name, json.loads(found.arguments))


@pytest.mark.parametrize("words, expected", [
    ("What time is it?", ("get_time", {})),
    ("what's today's date", ("get_time", {})),
    ("Make it louder, please.", ("set_volume", {"action": "up"})),
    ("turn it down a bit", ("set_volume", {"action": "down"})),
    ("set the volume to forty five", ("set_volume", {"action": "set", "percent": 45})),
    ("volume 30 percent", ("set_volume", {"action": "set", "percent": 30})),
    ("how loud is the volume", ("set_volume", {"action": "get"})),
    ("please stop listening", ("mute_microphone", {})),
    ("okay goodbye", ("end_conversation", {})),
    ("is the wi-fi working", ("device_status", {})),
    ("tell me a joke", None),
    ("timetable", None),  # whole words only
])
def test_the_builtin_tools_from_everyday_words(words: str,
                                               expected: tuple[str, Any] | None) -> None:
    assert pick(words) == expected


def test_the_newest_request_wins_then_the_longer_keyword_then_the_first_tool() -> None:
    assert pick("what time is it and make it louder") == ("set_volume", {"action": "up"})
    assert pick("make it louder, and what time is it") == ("get_time", {})
    tools = [tool("weather"), tool("weather_forecast")]
    assert pick("the weather forecast", tools)[0] == "weather_forecast"  # type: ignore[index]
    assert pick("weather", tools)[0] == "weather"  # type: ignore[index]


def test_other_tools_are_named_by_their_words_or_by_settings() -> None:
    lights = tool("turn_on_the_lights")
    search = tool("search_recipes", {"type": "object", "required": ["query"],
                                     "properties": {"query": {"type": "string"}}})
    assert pick("switch on the lights", [lights]) == ("turn_on_the_lights", {})
    assert pick("find me recipes for soup", [search]) == (
        "search_recipes", {"query": "find me recipes for soup"})
    # generic verbs are not keywords: "get" alone names nothing
    assert pick("get going", [tool("get_news")]) is None
    assert pick("any news", [tool("get_news")]) == ("get_news", {})
    assert pick("how are the plants", [lights], turn_on_the_lights=["plants"]) == (
        "turn_on_the_lights", {})
    assert pick("switch on the lights", [lights], turn_on_the_lights=["plants"]) is None


def test_tools_whose_arguments_speech_cannot_give_are_left_out() -> None:
    two = tool("book_table", {"type": "object", "required": ["day", "people"],
                              "properties": {"day": {"type": "string"},
                                             "people": {"type": "integer"}}})
    enum = tool("set_mode", {"type": "object", "required": ["mode"], "properties": {
        "mode": {"type": "string", "enum": ["eco", "boost"]}}})
    number = tool("set_heating", {"type": "object", "required": ["celsius"],
                                  "properties": {"celsius": {"type": "number"}}})
    assert intents.intents_for([two, enum, number]) == ()
    assert pick("book a table", [two]) is None


# ------------------------------------------------------------------ transcripts


def test_segments_close_on_a_turn_change_and_on_quiet_time() -> None:
    a = Assembler(quiet_ms=2000)
    assert a.add("user", "u1", "What's", 600, 800) == []
    assert a.add("user", "u2", " the time", 800, 1200) == []
    closed = a.add("assistant", "a1", "It's", 1400, 1600)
    assert [(s.role, s.text, s.start_ms, s.end_ms) for s in closed] == [
        ("user", "What's the time", 600, 1200)]
    assert a.advance(3599) == []
    assert [(s.text, s.end_ms) for s in a.advance(3600)] == [("It's", 1600)]
    # the same role after a long pause is a new segment
    a.add("user", "u3", "one", 4000, 4200)
    assert [s.text for s in a.add("user", "u4", "two", 6400, 6600)] == ["one"]
    assert [s.text for s in a.close()] == ["two"] and a.open == {}


def test_a_server_behind_the_uplink_does_not_split_an_utterance() -> None:
    """The quiet time counts from when the fragment arrived, not from its end on the
    timeline: a server 2.4 s behind what the device has sent (a loaded machine, a slow
    link) sent "what" and " time is it" one after the other, and the timeline passing
    "what"'s end by the quiet time between them closed "what" alone (seen in a loaded
    run of tests/test_live_e2e.py: the record said "what")."""
    a = Assembler(quiet_ms=2000)
    a.add("user", "u1", "what", 0, 300, arrived_ms=2700)
    assert a.advance(2700) == []
    a.add("user", "u2", " time is it", 300, 900, arrived_ms=2720)
    assert a.advance(4700) == []
    assert [s.text for s in a.advance(4720)] == ["what time is it"]
    # without arrival times (a caller that does not know them) the end counts
    b = Assembler(quiet_ms=2000)
    b.add("user", "u1", "what", 0, 300)
    assert [s.text for s in b.advance(2300)] == ["what"]


def test_overlap_and_barge_in() -> None:
    a = Assembler()
    a.add("assistant", "a1", "The weather today", 0, 1000)
    assert a.add("user", "u1", "Stop", 800, 1000) == []  # over the assistant
    assert a.open["assistant"].barged
    closed = a.add("assistant", "a2", "Okay.", 1200, 1400)  # a new turn after the user's
    assert [(s.role, s.text, s.barged) for s in closed] == [
        ("assistant", "The weather today", True), ("user", "Stop", False)]
    assert a.open["assistant"].text == "Okay."


def test_fragments_are_deduped_joined_raw_and_bounded() -> None:
    a = Assembler(max_bytes=10)
    a.add("assistant", "a1", "hi \ud83d", 0, 200)
    a.add("assistant", "a1", "hi \ud83d", 0, 200)  # the same fragment again
    a.add("assistant", "a2", "\ude00!", 200, 400)  # the pair's second half
    a.add("assistant", "a3", "more words than fit", 400, 600)
    (seg,) = a.close()
    assert seg.text == "hi \U0001F600!" and seg.cut and a.fragments_cut == 1


def test_the_users_words_since_the_assistant_last_spoke() -> None:
    a = Assembler()
    a.add("user", "u1", "hello", 0, 400)
    a.add("assistant", "a1", "Hi, what can I do?", 600, 1400)
    a.add("assistant", "a2", " Okay, checking.", 3000, 3400)  # the acknowledgement
    a.add("user", "u3", " please", 2400, 2800)  # transcribed late, comes later
    a.add("user", "u2", "what time is it", 1600, 2400)
    assert a.user_words(2800) == "what time is it please"
    assert a.user_words(1000) == "hello"
