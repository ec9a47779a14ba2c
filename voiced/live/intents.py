"""Which tool a GPT-Live client delegation asks for, inferred from the user's words.

``session.delegation.created`` carries an id and a position on the timeline, never the
task (protocol notes §6): the device must work out what was asked from what the user
said. The rule, pure and testable:

1. The words are the user's transcript fragments since the end of the assistant's last
   speech before the delegation, up to the delegation's position (plus a short wait for
   words transcribed late; :mod:`voiced.live.core`).
2. Each tool has keywords: the built-in tools have their own (``volume``, ``louder``,
   ``what time``, ...), any other tool the words of its name (``weather_forecast`` →
   ``weather``, ``forecast``; generic verbs such as ``get`` and ``set`` left out), unless
   the settings name its keywords. A keyword matches as whole words, case-insensitive.
3. The tool whose keyword occurs *last* in the words wins (the newest request); a tie
   goes to the longer keyword, then to the tool declared first.
4. Its arguments come from the words where the tool has a parser (``set_volume``: a
   number, or up/down); a tool without required parameters gets ``{}``; a tool with one
   required free-text string parameter gets the words themselves; any other tool cannot
   be called from speech and does not match.

Nothing matching is answered with a commentary saying the device cannot do that (the
core's fallback), so the model never waits on a delegation for good.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from voiced import wire

Arguments = Callable[[str], dict[str, Any] | None]
"""Arguments for a call from the user's words, or None when they cannot be had."""

_WORD: Final = re.compile(r"[^\w]+")
_GENERIC: Final = frozenset({"get", "set", "do", "run", "call", "make", "the", "a", "an",
                             "my", "to", "of", "for", "and", "tool", "api", "http", "fetch",
                             "query", "read", "check", "current", "now"})
_NUMBERS: Final = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS: Final = {w: 10 * i for i, w in enumerate(
    "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if w != "_"}


def normalize(text: str) -> str:
    """Lower case, words separated by single spaces (punctuation dropped)."""
    return " ".join(_WORD.sub(" ", text.lower()).replace("_", " ").split())


def _number(words: str) -> int | None:
    """The last number said, in digits or English words up to one hundred."""
    tokens = words.split()
    found: int | None = None
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.isdigit() and len(t) <= 4:
            found = int(t)
        elif t == "hundred":
            found = 100
        elif t in _TENS:
            found = _TENS[t]
            if i + 1 < len(tokens) and tokens[i + 1] in _NUMBERS and _NUMBERS[tokens[i + 1]] < 10:
                found += _NUMBERS[tokens[i + 1]]
                i += 1
        elif t in _NUMBERS:
            found = _NUMBERS[t]
        i += 1
    return found


def _volume(words: str) -> dict[str, Any]:
    n = _number(words)
    padded = f" {words} "
    if n is not None and 0 <= n <= 100:
        return {"action": "set", "percent": n}
    if any(f" {w} " in padded for w in ("louder", "up", "increase", "raise", "higher")):
        return {"action": "up"}
    if any(f" {w} " in padded for w in ("quieter", "softer", "down", "decrease", "lower")):
        return {"action": "down"}
    return {"action": "get"}


def _no_arguments(words: str) -> dict[str, Any]:
    return {}


BUILTIN: Final[Mapping[str, tuple[tuple[str, ...], Arguments]]] = {
    "get_time": (("time", "what time", "date", "what day", "clock", "today s date"),
                 _no_arguments),
    "set_volume": (("volume", "louder", "quieter", "softer", "turn it up", "turn it down",
                    "turn up", "turn down"), _volume),
    "mute_microphone": (("mute", "stop listening", "microphone off", "mic off"),
                        _no_arguments),
    "end_conversation": (("goodbye", "bye", "good bye", "end the conversation",
                          "that s all", "stop the conversation"), _no_arguments),
    "device_status": (("status", "network", "uptime", "wifi", "wi fi", "ip address",
                       "connection"), _no_arguments),
}
"""The built-in tools' keywords and argument parsers (voiced/tools/builtin.py)."""


@dataclass(frozen=True, slots=True)
class Intent:
    """A tool as speech reaches it."""

    name: str
    keywords: tuple[str, ...]
    arguments: Arguments


@dataclass(frozen=True, slots=True)
class Match:
    """The tool a delegation asks for, with its arguments as JSON text."""

    name: str
    arguments: str
    keyword: str


def _free_text(parameters: Any) -> Arguments | None:
    """Arguments for a schema from the words: none needed, or one free-text string."""
    if not isinstance(parameters, dict):
        return _no_arguments
    required = parameters.get("required") or []
    if not required:
        return _no_arguments
    props = parameters.get("properties") or {}
    if len(required) != 1 or not isinstance(props, dict):
        return None
    prop = props.get(required[0])
    if not isinstance(prop, dict) or prop.get("type") != "string" or "enum" in prop:
        return None
    key = str(required[0])
    return lambda words: {key: words}


def intents_for(tools: Sequence[wire.FunctionToolParam],
                keywords: Mapping[str, Sequence[str]] | None = None) -> tuple[Intent, ...]:
    """The intents of the declared tools; ``keywords`` overrides any tool's keywords.

    A tool whose arguments cannot come from speech (several required parameters, an
    enum, a number) is left out unless it has a built-in parser.
    """
    out: list[Intent] = []
    for tool in tools:
        name = tool["name"]
        builtin = BUILTIN.get(name)
        args: Arguments | None = builtin[1] if builtin else _free_text(tool.get("parameters"))
        if args is None:
            continue
        words: Sequence[str]
        if keywords and name in keywords:
            words = keywords[name]
        elif builtin:
            words = builtin[0]
        else:
            words = [w for w in normalize(name).split() if w not in _GENERIC and len(w) > 2]
        kept = tuple(dict.fromkeys(k for k in (normalize(w) for w in words) if k))
        if kept:
            out.append(Intent(name, kept, args))
    return tuple(out)


def match(intents: Sequence[Intent], words: str) -> Match | None:
    """The tool the words ask for (rule 3 above), or None."""
    text = f" {normalize(words)} "
    best: tuple[int, int, int] | None = None
    found: Match | None = None
    for order, intent in enumerate(intents):
        for keyword in intent.keywords:
            at = text.rfind(f" {keyword} ")
            if at < 0:
                continue
            rank = (at, len(keyword), -order)
            if best is not None and rank <= best:
                continue
            args = intent.arguments(text.strip())
            if args is None:
                continue
            best = rank
            found = Match(intent.name, json.dumps(args, ensure_ascii=False), keyword)
    return found
