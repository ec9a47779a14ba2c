"""Transcripts of a Live conversation: fragments → segments → records, and the history.

Fragments are assembled into segments on the timeline (:mod:`voiced.live.transcripts`).
A user segment is recorded when it closes; an assistant segment waits (as a ``Draft``)
until the bursts under it have played or were stopped, so its ``heard_ms`` and
``interrupted`` are known. A record's ``item_id`` is ``<session id>/<role>/<start_ms>``,
so its id (uuid5 of device and item, :func:`voiced.transcripts.record_id`) is stable.
"""

from __future__ import annotations

import logging
from typing import Final

from voiced import guard
from voiced.core.effects import Draft, Record
from voiced.core.history import History
from voiced.live import wire as lw
from voiced.live.facts import LiveFacts, Out
from voiced.live.track import MAX_BURSTS, Track
from voiced.live.transcripts import Assembler, Segment
from voiced.transcripts import Transcript

logger = logging.getLogger("voiced.live.core")

_LOG_TEXT: Final = 1000


class Records:
    """The transcript assembler, the assistant records waiting for playback, the history."""

    def __init__(self, facts: LiveFacts, out: Out, track: Track, history: History) -> None:
        self.facts = facts
        self.out = out
        self.track = track
        self.history = history
        self.assembler = self._assembler()
        # assistant segments waiting for their audio to play out: (segment, its record as
        # far as known, its session)
        self.unrecorded: list[tuple[Segment, Transcript, int]] = []

    def _assembler(self) -> Assembler:
        s = self.facts.settings
        return Assembler(quiet_ms=s.segment_quiet_ms, max_bytes=s.max_transcript_bytes)

    def new_session(self) -> None:
        """A session started: its fragments are on a new timeline."""
        self.assembler = self._assembler()

    def on_fragment(self, ev: lw.TranscriptDelta) -> None:
        """A transcript fragment of either role."""
        for seg in self.assembler.add(ev.role, ev.event_id, ev.delta, ev.start_ms,
                                      ev.end_ms, arrived_ms=self.facts.timeline_ms()):
            self.segment_closed(seg)

    def advance(self, now_ms: int) -> None:
        """The timeline moved: segments it has passed by the quiet time close."""
        for seg in self.assembler.advance(now_ms):
            self.segment_closed(seg)

    def close_open(self) -> None:
        """Close every open segment (the session or the conversation ended)."""
        for seg in self.assembler.close():
            self.segment_closed(seg)

    def segment_closed(self, seg: Segment) -> None:
        """Record a user segment; an assistant one once its audio has played."""
        if not seg.text:
            return
        if seg.role == "user":
            self._record(seg, self._transcript(seg))
            return
        entry = (seg, self._transcript(seg), self.facts.session_no)
        self.unrecorded.append(entry)
        if len(self.unrecorded) > MAX_BURSTS:  # playback never reported: record anyway
            old, draft, _ = self.unrecorded.pop(0)
            self._record(old, draft)
        self.flush()
        if entry in self.unrecorded:  # its audio still plays: the words survive a crash
            self.out.emit(Draft(entry[1]))

    def flush(self) -> None:
        """Record the assistant segments whose audio has finished playing."""
        for entry in list(self.unrecorded):
            seg, draft, session = entry
            if self.track.playing(seg, session):
                continue
            self.unrecorded.remove(entry)
            self._record(seg, Transcript(
                role=draft.role, text=draft.text, item_id=draft.item_id,
                conversation_id=draft.conversation_id,
                metadata={**draft.metadata,
                          "interrupted": self.track.interrupted(seg, session),
                          "heard_ms": self.track.heard_ms(seg, session)}))

    def release(self) -> None:
        """Record every assistant segment still waiting for playback (never lost).

        The daemon stops; a record is marked interrupted where part of it went unheard.
        """
        for seg, draft, session in self.unrecorded:
            heard = self.track.heard_ms(seg, session)
            self._record(seg, Transcript(
                role=draft.role, text=draft.text, item_id=draft.item_id,
                conversation_id=draft.conversation_id,
                metadata={**draft.metadata, "heard_ms": heard,
                          "interrupted": (self.track.interrupted(seg, session)
                                          or heard < seg.end_ms - seg.start_ms)}))
        self.unrecorded.clear()

    def _transcript(self, seg: Segment) -> Transcript:
        """A segment of the current session and conversation as a record.

        An assistant's ``interrupted`` and ``heard_ms`` stay None until its audio played.
        """
        f = self.facts
        item_id = f"{f.session_id or 'live'}/{seg.role}/{seg.start_ms}"
        base = {"api": "live", "model": f.model, "item_id": item_id,
                "session_id": f.session_id, "start_ms": seg.start_ms,
                "end_ms": seg.end_ms}
        if seg.role == "user":
            metadata = {"input_method": "realtime_voice", **base}
        else:
            metadata = {"voice": f.settings.voice, **base, "response_id": None,
                        "interrupted": None, "heard_ms": None}
        if seg.cut:
            metadata["truncated"] = True
        return Transcript(role=seg.role, text=seg.text, item_id=item_id,
                          conversation_id=f.conversation_id, metadata=metadata)

    def _record(self, seg: Segment, t: Transcript) -> None:
        logger.info("%s: %s%s", seg.role, guard.printable(t.text, _LOG_TEXT),
                    " [interrupted]" if t.metadata.get("interrupted") else "")
        if t.conversation_id == self.facts.conversation_id:
            self.history.remember(seg.role, t.text, max(self.facts.settings.reseed_turns, 1))
        self.out.emit(Record(t))

    def seed(self) -> list[lw.InitialItemParam]:
        """The newest turns that fit the settings' bounds, oldest first."""
        s = self.facts.settings
        items: list[lw.InitialItemParam] = []
        chars = 0
        for role, text in reversed(self.history.turns):
            if len(items) >= s.reseed_turns:
                break
            chars += len(text)
            if chars > s.reseed_max_chars:
                break
            items.append(lw.history_item(role, text))
        return items[::-1]
