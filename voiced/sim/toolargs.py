"""Tool-call arguments that satisfy the tool's declared JSON schema.

The simulated model has no understanding, but a client's tool code must still get what
a real model sends: every required property, of the right type, an enum's value, nested
objects and arrays filled in the same way, numbers inside their bounds, strings of a
declared format. Values are plausible for the property's name where a name says
something (a ``city`` is a city), else neutral. Optional properties are left out.
Regular-expression ``pattern``s are not solved: a string that must match one is tried
against a few candidates and is otherwise the neutral one.
"""

from __future__ import annotations

import math
import re
from typing import Any

_DEPTH = 8  # deeper (recursive) schemas get no more than this
_FORMATS = {
    "date-time": "2026-01-01T12:00:00Z", "date": "2026-01-01", "time": "12:00:00",
    "email": "user@example.com", "uri": "https://example.com", "url": "https://example.com",
    "uri-reference": "https://example.com", "hostname": "example.com",
    "ipv4": "192.0.2.1", "ipv6": "2001:db8::1", "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "duration": "PT1M",
}
# a word in the property's name → a value a model would plausibly pass
_NAMED = (
    (("city", "location", "place", "town"), "Paris"),
    (("country",), "France"),
    (("timezone", "tz"), "Europe/Paris"),
    (("language", "lang", "locale"), "en"),
    (("currency",), "EUR"),
    (("unit", "units"), "celsius"),
    (("color", "colour"), "blue"),
    (("email",), "user@example.com"),
    (("url", "link"), "https://example.com"),
    (("name", "user", "person"), "Alex"),
    (("date", "day"), "2026-01-01"),
    (("time",), "12:00"),
    (("id",), "1"),
)
_NUMBERS = ((("percent", "volume", "level"), 50), (("temperature", "temp"), 21))


def arguments_for(schema: Any, heard: str = "") -> dict[str, Any]:
    """Arguments for a tool whose ``parameters`` are ``schema``.

    ``heard`` is what the user said, for free-text properties (a search query, a message).
    """
    value = _value(schema, schema, "", heard, 0, 0)
    return value if isinstance(value, dict) else {}


def _resolve(schema: Any, root: Any) -> Any:
    """Follow a local ``$ref`` (``#/$defs/x``); anything else is returned as it is."""
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#"):
        return schema
    node = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _merge(parts: list[Any]) -> dict[str, Any]:
    """``allOf``: one schema with every part's properties and requirements."""
    out: dict[str, Any] = {}
    for part in parts:
        if not isinstance(part, dict):
            continue
        for key, val in part.items():
            if key == "properties" and isinstance(val, dict):
                out.setdefault("properties", {}).update(val)
            elif key == "required" and isinstance(val, list):
                out["required"] = [*out.get("required", []), *val]
            else:
                out.setdefault(key, val)
    return out


def _value(schema: Any, root: Any, name: str, heard: str, depth: int, index: int) -> Any:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > _DEPTH:
        return "example" if depth else {}
    if "allOf" in schema and isinstance(schema["allOf"], list):
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        schema = _merge([rest, *(_resolve(p, root) for p in schema["allOf"])])
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[index % len(enum)]
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        return examples[0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next((o for o in options if _not_null(_resolve(o, root))), options[0])
            return _value(chosen, root, name, heard, depth + 1, index)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = ("object" if "properties" in schema else
                "array" if "items" in schema else "string")
    if kind == "object":
        return _object(schema, root, heard, depth)
    if kind == "array":
        return _array(schema, root, name, heard, depth)
    if kind in ("integer", "number"):
        return _number(schema, name, integer=kind == "integer", index=index)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, name, heard, index)


def _not_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") != "null"


def _object(schema: dict[str, Any], root: Any, heard: str, depth: int) -> dict[str, Any]:
    props = _get(schema, "properties", dict, {})
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key in _get(schema, "required", list, []):
        if not isinstance(key, str):
            continue
        sub = props.get(key, extra if isinstance(extra, dict) else {"type": "string"})
        out[key] = _value(sub, root, key, heard, depth + 1, 0)
    return out


def _array(schema: dict[str, Any], root: Any, name: str, heard: str, depth: int) -> list[Any]:
    low: int = _get(schema, "minItems", int, 0)
    high: int | None = _get(schema, "maxItems", int, None)
    count = max(low, 1) if high is None else min(max(low, 1), high)
    prefix: list[Any] = _get(schema, "prefixItems", list, [])
    items = schema.get("items", {})
    return [_value(prefix[i] if i < len(prefix) else items, root, name.rstrip("s"), heard,
                   depth + 1, i) for i in range(count)]


def _get(schema: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """``schema[key]`` when it is of the kind a schema keyword must be, else ``default``."""
    value = schema.get(key)
    return value if isinstance(value, kind) and not isinstance(value, bool) else default


def _number(schema: dict[str, Any], name: str, *, integer: bool, index: int) -> int | float:
    def num(key: str) -> float | None:
        v = schema.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    low, high = num("minimum"), num("maximum")
    ex_low, ex_high = num("exclusiveMinimum"), num("exclusiveMaximum")
    if integer:  # exclusive bounds become inclusive ones on whole numbers
        if ex_low is not None:
            low = max(low or -math.inf, math.floor(ex_low) + 1)
        if ex_high is not None:
            high = min(high if high is not None else math.inf, math.ceil(ex_high) - 1)
        low = None if low is None else math.ceil(low)
        high = None if high is None else math.floor(high)
    words = set(re.split(r"[^a-z]+", name.lower()))
    want: float = next((v for keys, v in _NUMBERS if words & set(keys)), 1) + index
    if low is not None:
        want = max(want, low)
    if high is not None:
        want = min(want, high)
    if not integer and ((ex_low is not None and want <= ex_low)
                        or (ex_high is not None and want >= ex_high)):
        floor = max((b for b in (low, ex_low) if b is not None), default=want - 2)
        ceiling = min((b for b in (high, ex_high) if b is not None), default=floor + 2)
        want = (floor + ceiling) / 2
    step = num("multipleOf")
    if step:
        up = round(math.ceil(want / step) * step, 10)
        fits_up = (high is None or up <= high) and (ex_high is None or up < ex_high)
        want = up if fits_up else round(math.floor(want / step) * step, 10)
    return int(want) if integer else want


def _string(schema: dict[str, Any], name: str, heard: str, index: int) -> str:
    fmt = schema.get("format")
    words = set(re.split(r"[^a-z]+", name.lower()))
    if isinstance(fmt, str) and fmt in _FORMATS:
        text = _FORMATS[fmt]
    elif named := next((v for keys, v in _NAMED if words & set(keys)), None):
        text = named
    elif heard and words & {"query", "q", "text", "message", "prompt", "question", "search"}:
        text = heard
    else:
        text = "example"
    if index:
        text = f"{text} {index + 1}"  # distinct array elements (uniqueItems)
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            fits = re.compile(pattern)
        except re.error:
            fits = None
        if fits is not None and not fits.search(text):
            text = next((c for c in (*_FORMATS.values(), "example", "a", "1", "A1")
                         if fits.search(c)), text)
    low = schema.get("minLength")
    high = schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text = text + "x" * (low - len(text))
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text
