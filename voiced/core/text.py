"""Transcript text as the core keeps it: valid Unicode, bounded in UTF-8 bytes."""

from __future__ import annotations

import logging

from voiced import guard, wire
from voiced.core.facts import Facts

logger = logging.getLogger("voiced.core")


def bounded(text: str, facts: Facts) -> str:
    """``text`` as valid Unicode, cut to ``max_transcript_bytes`` of UTF-8 (counted)."""
    text = wire.valid_text(text)
    limit = facts.policy.max_transcript_bytes
    if len(text) * 4 <= limit or wire.utf8_len(text) <= limit:
        return text
    facts.counters.transcripts_cut += 1
    if guard.should_log("session:transcript-cut") is not None:
        logger.warning("a transcript of %d characters was cut to %d bytes "
                       "(realtime.max_transcript_bytes)", len(text), limit)
    return cut_utf8(text, limit)


def cut_utf8(text: str, limit: int) -> str:
    """The longest start of ``text`` that is at most ``limit`` bytes of UTF-8."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    end = limit
    while end > 0 and data[end] & 0xC0 == 0x80:  # not inside a character
        end -= 1
    return data[:end].decode("utf-8", "surrogatepass")
