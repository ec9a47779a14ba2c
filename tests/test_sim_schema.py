"""The simulator's knowledge of the GA dialect, held to the official SDK's types: the
client fields it accepts (everything else is refused as upstream refuses it), and the
tool arguments it makes up (they satisfy the tool's declared JSON schema)."""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Iterator
from typing import Any, get_args, get_origin, get_type_hints

import fastjsonschema
import pytest
import typing_extensions
from openai.types.realtime import (
    realtime_client_event_param,
    realtime_response_create_params_param,
    realtime_session_create_request_param,
)

from voiced.sim import fields
from voiced.sim.toolargs import arguments_for

_WRAPPERS = {typing.Required, typing.NotRequired, typing_extensions.Required,
             typing_extensions.NotRequired, typing.Annotated}
_LISTS = {list, collections.abc.Iterable, collections.abc.Sequence}


def alternatives(t: Any) -> Iterator[tuple[bool, Any]]:
    """The (is a list, type) alternatives of an SDK annotation, unions flattened."""
    origin = get_origin(t)
    if origin in _WRAPPERS:
        yield from alternatives(get_args(t)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in get_args(t):
            yield from alternatives(arg)
    elif origin in _LISTS or getattr(origin, "__name__", "") == "SequenceNotStr":
        for _, inner in alternatives(get_args(t)[0]):
            yield True, inner
    else:
        yield False, t


def typeddicts(t: Any, *, listed: bool) -> list[Any]:
    return [a for is_list, a in alternatives(t)
            if is_list == listed and typing_extensions.is_typeddict(a)]


def kind_of(td: Any) -> str:
    (literal,) = get_args(next(a for _, a in alternatives(get_type_hints(td)["type"])))
    return str(literal)


def differences(spec: fields.Spec, annotation: Any, path: str) -> Iterator[str]:
    """Where the simulator's table and the SDK's TypedDicts disagree."""
    if spec is None:
        return  # the simulator accepts anything here
    if isinstance(spec, fields.Each):
        yield from differences(spec.item, _ListOf(annotation), path + "[]")
        return
    listed = isinstance(annotation, _ListOf)
    inner = annotation.t if listed else annotation
    tds = typeddicts(inner, listed=listed)
    if isinstance(spec, fields.ByType):
        sdk = {kind_of(td): td for td in tds}
        if set(sdk) != set(spec.kinds):
            yield f"{path}: kinds {sorted(spec.kinds)} != SDK {sorted(sdk)}"
        for kind in set(sdk) & set(spec.kinds):
            yield from _compare(spec.kinds[kind], sdk[kind], f"{path}<{kind}>")
        return
    if len(tds) != 1:
        yield f"{path}: the SDK has {len(tds)} object shapes here"
        return
    yield from _compare(spec, tds[0], path)


class _ListOf:
    def __init__(self, t: Any) -> None:
        self.t = t


def _compare(spec: typing.Mapping[str, fields.Spec], td: Any, path: str) -> Iterator[str]:
    hints = get_type_hints(td, include_extras=True)
    if set(spec) != set(hints):
        yield (f"{path}: only the simulator knows {sorted(set(spec) - set(hints))}, only "
               f"the SDK {sorted(set(hints) - set(spec))}")
    for key in set(spec) & set(hints):
        yield from differences(spec[key], hints[key], f"{path}.{key}")


def test_the_session_fields_the_simulator_knows_are_the_sdks() -> None:
    sdk = realtime_session_create_request_param.RealtimeSessionCreateRequestParam
    assert list(_compare(fields.SESSION, sdk, "session")) == []


def test_the_response_create_fields_the_simulator_knows_are_the_sdks() -> None:
    sdk = realtime_response_create_params_param.RealtimeResponseCreateParamsParam
    assert list(_compare(fields.RESPONSE, sdk, "response")) == []


def test_the_client_events_the_simulator_knows_are_the_sdks() -> None:
    union = realtime_client_event_param.RealtimeClientEventParam
    sdk = {kind_of(td): td for _, td in alternatives(union)}
    # upstream refuses output_audio_buffer.clear on a WebSocket (WebRTC and SIP only)
    assert set(sdk) - set(fields.CLIENT_EVENTS) == {"output_audio_buffer.clear"}
    assert set(fields.CLIENT_EVENTS) <= set(sdk)
    for kind, spec in fields.CLIENT_EVENTS.items():
        if kind == "session.update":
            # a realtime session (the test above) or a transcription session, which the
            # simulator refuses in so many words: not simulated
            spec = {**spec, "session": None}
        assert list(_compare(spec, sdk[kind], kind)) == [], kind


def test_unknown_field_names_the_dotted_path() -> None:
    ev = {"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_ms": 300}}}}}
    assert fields.unknown_field(ev, fields.CLIENT_EVENTS["session.update"], "") == \
        "session.audio.input.turn_detection.silence_ms"
    # eagerness belongs to semantic_vad only
    ev["session"]["audio"]["input"]["turn_detection"] = {"type": "server_vad",
                                                         "eagerness": "low"}
    assert fields.unknown_field(ev, fields.CLIENT_EVENTS["session.update"], "") == \
        "session.audio.input.turn_detection.eagerness"
    tools = {"type": "session.update", "session": {"type": "realtime", "tools": [
        {"type": "function", "name": "a", "parameters": {"anything": "goes"}},
        {"type": "function", "name": "b", "strict": True}]}}
    assert fields.unknown_field(tools, fields.CLIENT_EVENTS["session.update"], "") == \
        "session.tools[1].strict"
    assert fields.unknown_field({"type": "response.cancel", "response_id": "r"},
                                fields.CLIENT_EVENTS["response.cancel"], "") is None


# ------------------------------------------------------------------ tool arguments

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {}},
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
     "additionalProperties": False},
    {"type": "object", "required": ["unit", "days", "metric", "when", "mail", "tags"],
     "properties": {
         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
         "days": {"type": "integer", "minimum": 3, "maximum": 10},
         "metric": {"type": "boolean"},
         "when": {"type": "string", "format": "date-time"},
         "mail": {"type": "string", "format": "email"},
         "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2,
                  "uniqueItems": True}}},
    {"type": "object", "required": ["where"], "properties": {"where": {
        "type": "object", "required": ["lat", "lon", "label"], "additionalProperties": False,
        "properties": {"lat": {"type": "number", "exclusiveMinimum": -90,
                               "exclusiveMaximum": 90},
                       "lon": {"type": "number", "minimum": -180, "maximum": 180},
                       "label": {"type": "string", "minLength": 12, "maxLength": 20}}}}},
    {"type": "object", "required": ["percent", "step", "code", "note"], "properties": {
        "percent": {"type": "integer", "minimum": 0, "maximum": 100, "multipleOf": 5},
        "step": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.1},
        "code": {"type": "string", "pattern": "^[A-Z][0-9]$"},
        "note": {"type": ["string", "null"], "maxLength": 3}}},
    {"$defs": {"item": {"type": "object", "required": ["sku", "qty"], "properties": {
        "sku": {"const": "A-1"}, "qty": {"type": "integer", "exclusiveMinimum": 0}}}},
     "type": "object", "required": ["items", "mode"], "properties": {
         "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1},
         "mode": {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["fast"]}]}}},
    {"type": "object", "allOf": [
        {"required": ["a"], "properties": {"a": {"type": "integer", "minimum": 7}}},
        {"required": ["b"], "properties": {"b": {"oneOf": [{"type": "boolean"},
                                                          {"type": "string"}]}}}]},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_made_up_tool_arguments_satisfy_the_schema(schema: dict[str, Any]) -> None:
    args = arguments_for(schema, "what is the weather in Lyon")
    fastjsonschema.compile(schema)(args)  # raises with the offending property
    assert set(args) == set(schema.get("required") or []) | {
        r for part in schema.get("allOf", []) for r in part.get("required", [])}


def test_made_up_arguments_are_plausible_for_the_names() -> None:
    schema = {"type": "object", "required": ["city", "query", "volume", "unit"],
              "properties": {"city": {"type": "string"}, "query": {"type": "string"},
                             "volume": {"type": "integer", "minimum": 0, "maximum": 100},
                             "unit": {"type": "string", "enum": ["c", "f"]}}}
    assert arguments_for(schema, "play some jazz") == {
        "city": "Paris", "query": "play some jazz", "volume": 50, "unit": "c"}


def test_the_builtin_tools_get_arguments_they_accept() -> None:
    from voiced.tools.builtin import builtin_tools

    class Device:
        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None

    from voiced import config
    settings = config.parse({"device_id": "t", "realtime": {"url": "ws://127.0.0.1:1/v1"}},
                            environ={})
    tools = builtin_tools(settings.tools.builtin, Device(), timezone="UTC", timeout_s=1)
    assert tools
    for tool in tools:
        params = tool.declaration()["parameters"]
        fastjsonschema.compile(params)(arguments_for(params))
