"""The assistant's replies: items, what of them was played, truncation, and records.

Each assistant audio item is tracked from its first delta until it has been played (or
cut) and recorded. The played position comes from the sink (never a wall-clock
estimate), and it decides both the truncation that tells the server what the user heard
and the record's ``interrupted``/``heard_ms``. Bounded against a hostile server: at most
``Policy.max_pending_items`` items (the oldest closed and recorded with the words they
have), ``Policy.max_transcript_bytes`` of UTF-8 per transcript, and 256 responses and
finished items remembered to recognise their late events.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from voiced import guard, wire
from voiced.core.effects import Draft, Play, Record, StopPlayback
from voiced.core.emitter import Emitter
from voiced.core.facts import Facts
from voiced.core.history import History
from voiced.core.text import bounded, cut_utf8
from voiced.transcripts import Transcript

logger = logging.getLogger("voiced.core")

_COMPACT_DELTAS: Final = 64  # transcript deltas are joined into one string past this
_MAX_DISCARDED: Final = 256  # interrupted responses whose late events are dropped
# an unfinished item with no event for this long, and nothing left to play, is over
# (its response.done was lost): without this it would show `speaking` for good
_ITEM_STALE_S: Final = 60.0
_LOG_TEXT: Final = 1000  # characters of a transcript shown in a log line


@dataclass(slots=True)
class Item:
    """Playback bookkeeping for one assistant audio item."""

    response_id: str
    conversation: int  # Filing.number when the item appears: a long press must not re-file it
    model: str  # the model of the session that made it
    content_index: int = 0
    received: int = 0  # samples received from the server
    played: int | None = None  # samples the device consumed, once known
    audio_done: bool = False
    finished: bool = False
    interrupted: bool = False
    transcript: str | None = None
    partial: list[str] = field(default_factory=list)  # transcript deltas, until the .done
    partial_bytes: int = 0  # their UTF-8 size, bounded by Policy.max_transcript_bytes
    response_over: bool = False  # its response is done (or its session gone)
    session: int = 0  # which Realtime session made it (the core's count)
    recorded: bool = False
    drafted: bool = False
    overflowed: bool = False  # ran further ahead of playback than the sink holds
    last_event: float = 0.0  # when a server event last touched it


class Replies:
    """The ledger of assistant items, from the first delta to the record."""

    def __init__(self, facts: Facts, out: Emitter, history: History) -> None:
        self.facts = facts
        self.out = out
        self.history = history
        self.items: dict[str, Item] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()  # forgotten, newest last
        self.discarded: OrderedDict[str, None] = OrderedDict()  # responses cut short

    # ---------------------------------------------------------------- reads

    def speaking(self) -> bool:
        """Some item has audio that is playing or queued."""
        return any(not it.finished and it.received for it in self.items.values())

    def transcript_bytes(self) -> int:
        """UTF-8 bytes of assistant transcript text held (partial and whole)."""
        return sum(it.partial_bytes + (wire.utf8_len(it.transcript) if it.transcript else 0)
                   for it in self.items.values())

    def open_responses(self) -> set[str]:
        """Responses with items whose response is not over yet."""
        return {it.response_id for it in self.items.values() if not it.response_over}

    # ---------------------------------------------------------------- server events

    def on_audio_delta(self, ev: wire.AudioDelta, *, devices_down: bool) -> None:
        """Reply audio: play it (or, with the devices down, cancel it unheard)."""
        f = self.facts
        if ev.response_id in self.discarded or ev.item_id in self.finished:
            # a cancelled response, or audio for an item that ended and was forgotten
            f.counters.deltas_dropped += 1
            return
        item = self._item(ev.item_id, ev.response_id, ev.content_index)
        if item.finished:
            # audio after the item ended (out of order, or after an interruption)
            f.counters.deltas_dropped += 1
            return
        item.received += len(ev.pcm) // wire.BYTES_PER_SAMPLE
        f.awaiting_reply = False
        if devices_down:
            self._unheard(ev.item_id, item)
            return
        f.queued = True
        self.out.emit(Play(ev.pcm, ev.item_id))

    def _unheard(self, item_id: str, item: Item) -> None:
        """Reply audio while the audio devices are closed (a fault, being retried).

        Nobody hears it, so the response is cancelled and the item truncated at 0 ms, as if
        the user had interrupted it before its first sample. Playing it once the speaker is
        back would be late, and the model would believe it had been heard.
        """
        logger.info("reply audio while the audio devices are down: cancelling the "
                    "response, nothing of it heard")
        self.facts.counters.interruptions += 1
        self.discard_active(cancel=True)
        item.interrupted = True
        item.finished = True
        item.played = 0
        self._truncate(item_id, item, 0)
        self._maybe_record(item_id, item)

    def on_audio_done(self, ev: wire.AudioDone) -> None:
        """No more audio for an item: it is finished once nothing of it is queued."""
        item = self.items.get(ev.item_id)
        if item is None or item.finished:
            return
        item.audio_done = True
        if not self.facts.queued:
            item.finished = True
            item.played = item.received
            self._maybe_record(ev.item_id, item)

    def on_transcript(self, ev: wire.AudioTranscriptDone | wire.AudioTranscriptDelta) -> None:
        """The assistant's words for an item: the whole (``.done``) or more of them."""
        if ev.item_id in self.finished:
            # words for an item already recorded or given up: a new item for them
            # would leave a draft that nothing ever replaces
            logger.debug("late transcript for %s dropped", guard.printable(ev.item_id, 100))
            return
        item = self._item(ev.item_id, ev.response_id)
        if isinstance(ev, wire.AudioTranscriptDelta):
            self._add_words(item, ev.delta)
            return
        item.transcript = bounded(ev.transcript, self.facts)
        item.partial.clear()
        item.partial_bytes = 0
        self._maybe_record(ev.item_id, item)

    def on_response_done(self, ev: wire.ResponseDone) -> None:
        """``response.done``: its transcripts fill in what no ``.done`` brought."""
        if ev.status != "completed":
            logger.info("response %s ended %s%s", guard.printable(ev.response_id, 100),
                        guard.printable(ev.status, 40),
                        f" ({guard.printable(ev.reason, 100)})" if ev.reason else "")
        for item_id, text in ev.transcripts.items():
            item = self.items.get(item_id)
            if item is not None and item.transcript is None:
                item.transcript = bounded(text, self.facts)

    # ---------------------------------------------------------------- interruptions

    def interrupt(self, *, cancel: bool) -> None:
        """Stop playback now; truncation follows in :meth:`on_playback_stopped`."""
        for item in self.items.values():
            if not item.finished and item.received:
                item.interrupted = True
        self.discard_active(cancel=cancel)
        self.facts.awaiting_reply = False
        self.out.emit(StopPlayback())

    def discard_active(self, *, cancel: bool) -> None:
        """Drop the rest of the active response; ``cancel`` also asks the server to stop."""
        f = self.facts
        if f.active_response is not None:
            self.discard(f.active_response)
            if cancel and f.configured:
                self.out.send({"type": "response.cancel", "event_id": self.out.eid(),
                               "response_id": f.active_response})

    def discard(self, response_id: str) -> None:
        """Drop the rest of this response's events (bounded: the oldest are forgotten)."""
        self.discarded[response_id] = None
        while len(self.discarded) > _MAX_DISCARDED:
            self.discarded.popitem(last=False)

    # ---------------------------------------------------------------- playback reports

    def on_playback_stopped(self, now: float, played: Mapping[str, int]) -> None:
        """Answer to :class:`StopPlayback`: samples of each item the device really played.

        Sinks report only items that still had audio queued, so an item absent from
        ``played`` was heard in full. Sends the truncation that tells the server what
        the user actually heard.
        """
        self.facts.queued = False
        self.facts.mute_until = now + self.facts.policy.echo_tail_ms / 1000
        # a copy: recording an item forgets it from self.items
        for item_id, item in list(self.items.items()):
            if item.finished or not item.interrupted:
                continue
            heard = min(played.get(item_id, item.received), item.received)
            item.played = heard
            item.finished = True
            # all received was heard, but more was still coming (playback had run dry):
            # the server holds audio and words past what we got, so it is told too
            if heard < item.received or not item.audio_done:
                self._truncate(item_id, item, heard)
            self._maybe_record(item_id, item)

    def on_playback_full(self, item_id: str, refused: int) -> bool:
        """The sink refused ``refused`` samples of reply audio: it holds its maximum.

        The rest of the reply is cancelled; what was queued plays out, and then the
        server is told where the user stopped hearing. Returns False when nothing changed
        but a count (an unknown item, or one already cut).
        """
        f = self.facts
        f.counters.playback_overflows += 1
        item = self.items.get(item_id)
        if item is None:
            return False
        item.received = max(0, item.received - refused)
        if item.overflowed:
            return False
        if guard.should_log("session:overflow") is not None:
            logger.warning("reply audio is more than the speaker queue may hold ahead of "
                           "playback (audio.max_queued_s): the rest of the reply is "
                           "cancelled")
        item.overflowed = item.interrupted = True
        item.audio_done = True  # nothing more of it is taken: it ends when played out
        if not item.response_over:
            self.discard(item.response_id)
            if f.configured:
                self.out.send({"type": "response.cancel", "event_id": self.out.eid(),
                               "response_id": item.response_id})
        f.awaiting_reply = False
        return True

    def on_playback_drained(self, now: float) -> None:
        """Everything queued has been played (the device consumed it)."""
        f = self.facts
        if any(it.received and not it.audio_done for it in self.items.values()):
            f.counters.underruns += 1  # the network fell behind real time
        f.queued = False
        f.mute_until = now + f.policy.echo_tail_ms / 1000
        for item_id, item in list(self.items.items()):
            if item.audio_done and not item.finished:
                item.finished = True
                item.played = item.received
                if item.overflowed:  # the server holds more than was played: say so
                    self._truncate(item_id, item, item.received)
                self._maybe_record(item_id, item)
                if item.response_over and item.transcript is None:
                    self._forget(item_id)  # nothing will ever come for it
                    logger.info("assistant item %s ended with no transcript", item_id)

    # ---------------------------------------------------------------- endings

    def close_response(self, response_id: str) -> None:
        """The response is over: items that got no audio are done; record what we can."""
        f = self.facts
        if f.active_response == response_id:
            f.active_response = None
        f.awaiting_reply = False
        for item_id, item in list(self.items.items()):
            if item.response_id != response_id:
                continue
            item.audio_done = True
            item.response_over = True
            self._finish_words(item)  # no .done came (a drop mid-reply): the words so far
            if not item.finished and (not item.received or not f.queued):
                item.finished = True
                item.played = item.received if item.played is None else item.played
            self._maybe_record(item_id, item)
            if item.finished and item.transcript is None and not item.recorded:
                self._forget(item_id)  # nothing will ever come for it
                logger.info("assistant item %s ended with no transcript",
                            guard.printable(item_id, 100))
        self.discarded.pop(response_id, None)

    def close_stale(self, now: float) -> bool:
        """Items no event touched for a minute, with nothing left to play, are over.

        Returns whether any was closed.
        """
        if self.facts.queued:
            return False
        stale = [k for k, it in self.items.items() if now - it.last_event > _ITEM_STALE_S]
        for item_id in stale:
            logger.info("assistant item %s had no event for %g s: closing it",
                        guard.printable(item_id, 100), _ITEM_STALE_S)
            self._force_close(item_id)
        return bool(stale)

    # ---------------------------------------------------------------- internals

    def _item(self, item_id: str, response_id: str, content_index: int = 0) -> Item:
        """The item, new (of this conversation and session) if it is not known yet.

        At ``max_pending_items`` the oldest item is closed first (recorded with the words
        it has): a server that starts items and never finishes them cannot grow memory.
        """
        f = self.facts
        item = self.items.get(item_id)
        if item is None:
            while len(self.items) >= max(1, f.policy.max_pending_items):
                oldest = next(iter(self.items))
                if guard.should_log("session:items-pruned") is not None:
                    logger.warning("more than %d assistant items unfinished: closing the "
                                   "oldest (%s)", f.policy.max_pending_items,
                                   guard.printable(oldest, 100))
                self._force_close(oldest)
            item = self.items[item_id] = Item(response_id=response_id,
                                              conversation=f.filing.number, model=f.model,
                                              content_index=content_index,
                                              session=f.session_no)
        item.last_event = f.clock
        return item

    def _force_close(self, item_id: str) -> None:
        """End an item that will not end by itself; record its words if it has any."""
        item = self.items[item_id]
        self.facts.counters.items_pruned += 1
        self._finish_words(item)
        if not item.finished:
            item.finished = True
            item.played = item.received if item.played is None else item.played
        self._maybe_record(item_id, item)
        self._forget(item_id)

    def _forget(self, item_id: str) -> None:
        """Drop a finished item; its late audio is still recognised as late (bounded)."""
        if self.items.pop(item_id, None) is not None:
            self.finished[item_id] = None
            while len(self.finished) > _MAX_DISCARDED:
                self.finished.popitem(last=False)

    def _truncate(self, item_id: str, item: Item, heard: int) -> None:
        """Tell the server the user heard ``heard`` samples of the item, if it is its.

        A reply left over from the last session is unknown to this one (the server would
        answer ``item_truncate_invalid_item_id``), and its own session is gone.
        """
        f = self.facts
        if f.configured and item.session == f.session_no:
            self.out.send({"type": "conversation.item.truncate", "event_id": self.out.eid(),
                           "item_id": item_id, "content_index": item.content_index,
                           "audio_end_ms": heard * 1000 // wire.SAMPLE_RATE})

    def _add_words(self, item: Item, delta: str) -> None:
        """Keep a transcript delta (raw: a surrogate pair may be split across two)."""
        room = self.facts.policy.max_transcript_bytes - item.partial_bytes
        if item.transcript is not None or room <= 0:
            return
        size = wire.utf8_len(delta)
        if size > room:
            delta = cut_utf8(delta, room)
            size = wire.utf8_len(delta)
            self.facts.counters.transcripts_cut += 1
        item.partial.append(delta)
        item.partial_bytes += size
        if len(item.partial) > _COMPACT_DELTAS:  # one string, not thousands of tiny ones
            item.partial[:] = ["".join(item.partial)]

    def _finish_words(self, item: Item) -> None:
        """No .done will come: the words so far are the transcript.

        The deltas are joined before the text is repaired, so a surrogate pair a relay
        cut across two deltas becomes its character again.
        """
        if item.transcript is None and item.partial:
            item.transcript = bounded("".join(item.partial), self.facts)
        item.partial.clear()
        item.partial_bytes = 0

    def _maybe_record(self, item_id: str, item: Item) -> None:
        if item.recorded or item.transcript is None:
            return
        if not item.finished:
            if not item.drafted:  # the words are known; how much was heard is not yet
                item.drafted = True
                self.facts.filing.file(item.conversation,
                                       Draft(self._assistant(item_id, item, None)))
            return
        item.recorded = True
        f = self.facts
        if item.conversation == f.filing.number:
            self.history.remember("assistant", item.transcript, f.policy.reseed_turns)
        # rounded down as the truncation's audio_end_ms is: one count, one number
        heard_ms = (item.played or 0) * 1000 // wire.SAMPLE_RATE
        logger.info("assistant: %s%s", guard.printable(item.transcript, _LOG_TEXT),
                    f" [interrupted after {heard_ms} ms]" if item.interrupted else "")
        f.filing.file(item.conversation, Record(self._assistant(item_id, item, heard_ms)))
        # forget finished items so a days-long conversation does not grow memory
        for done_id in [k for k, v in self.items.items() if v.recorded]:
            self._forget(done_id)

    def _assistant(self, item_id: str, item: Item, heard_ms: int | None) -> Transcript:
        """The assistant transcript; ``heard_ms`` None: playback has not ended yet."""
        assert item.transcript is not None
        p = self.facts.policy
        return Transcript(
            role="assistant", text=item.transcript, item_id=item_id,
            conversation_id="",  # Filing sets it
            metadata={"voice": p.voice, "model": item.model,
                      "item_id": item_id, "response_id": item.response_id,
                      "interrupted": item.interrupted if heard_ms is not None else None,
                      "heard_ms": heard_ms})

