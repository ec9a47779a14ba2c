"""Frame-level checks every server event goes through (both dialects).

And the constants and text checks the wire shares.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from voiced import guard

SAMPLE_RATE: Final = 24_000
"""Hz; the only PCM rate the GA Realtime API accepts and produces."""
BYTES_PER_SAMPLE: Final = 2
MAX_DEPTH: Final = 64
"""Deepest nesting of arrays and objects accepted in a server frame (GA events nest
about 6 deep; a session.updated echoing tool schemas a few more)."""
MAX_ID_CHARS: Final = 256
"""Longest id (item, response, call, event, conversation) or tool name accepted."""
MAX_MESSAGE_CHARS: Final = 1000
"""A server error message is cut to this (it only ever reaches a log line)."""
LATEST_EPOCH_S: Final = 253_402_300_799.0
"""9999-12-31T23:59:59Z: a later ``expires_at`` is not a time anyone can show."""

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")  # in raw JSON text


def valid_text(text: str) -> str:
    r"""``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD.

    Python strings can hold lone UTF-16 surrogates (a JSON escape such as ``\ud83d``
    gives one), which no UTF-8 encoder accepts: a record or a re-seed holding one cannot
    be written or sent. Cheap when there are none (one regex search).
    """
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate counts as the 3 it would take)."""
    return len(text.encode("utf-8", "surrogatepass"))


def pcm_ms(nbytes: int) -> float:
    """Milliseconds of PCM16 mono 24 kHz audio in ``nbytes`` bytes."""
    return nbytes / BYTES_PER_SAMPLE / SAMPLE_RATE * 1000.0


class MalformedEvent(ValueError):
    """A server frame that is not a well-formed Realtime event."""




def _too_deep(value: object) -> bool:
    """Whether arrays/objects nest deeper than MAX_DEPTH (iteratively: never recurses)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _repaired(value: Any) -> Any:
    """``value`` with every string (keys too) made valid text; depth is already bounded."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, list):
        return [_repaired(v) for v in value]
    if isinstance(value, dict):
        return {valid_text(k): _repaired(v) for k, v in value.items()}
    return value


def load_frame(frame: str | bytes, raw_deltas: frozenset[str] = frozenset()
               ) -> dict[str, Any]:
    """Decode one server text frame into a JSON object with a string ``type``.

    The frame-level checks every server event goes through (the Realtime events here,
    the GPT-Live ones in :mod:`voiced.live.wire`): text only, JSON, nesting, an object,
    a bounded ``type``, and every string valid Unicode except the ``delta`` of the types
    in ``raw_deltas`` (transcript deltas: the core joins them before repairing).

    Raises:
        MalformedEvent: binary data, not JSON, too deep, not an object, no string type.
    """
    if isinstance(frame, bytes):
        raise MalformedEvent(f"binary frame of {len(frame)} bytes (the API sends text only)")
    try:
        d = json.loads(frame)
    except RecursionError:  # the C parser's own limit (about 1000 levels)
        raise MalformedEvent("nested too deeply") from None
    except ValueError as e:
        raise MalformedEvent(f"not JSON: {guard.printable(e, 120)}") from None
    # str.count is a C scan; only a frame with that many brackets can be that deep
    if frame.count("[") + frame.count("{") > MAX_DEPTH and _too_deep(d):
        raise MalformedEvent(f"nested more than {MAX_DEPTH} levels deep")
    if not isinstance(d, dict):
        raise MalformedEvent(f"not a JSON object but {type(d).__name__}")
    event: dict[str, Any] = d
    t = event.get("type")
    if not isinstance(t, str) or len(t) > MAX_ID_CHARS:
        raise MalformedEvent("no string 'type' field")
    if _SURROGATE_ESCAPE.search(frame) is not None:  # only escapes can make surrogates
        delta = event.get("delta") if t in raw_deltas else None
        event = _repaired(event)
        if isinstance(delta, str):
            event["delta"] = delta
    return event
