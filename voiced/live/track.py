"""The reply track: GPT-Live's one continuous output, played in bursts, and what was heard.

The service sends 100 ms deltas for the whole session, mostly digital silence. A *burst*
starts at the first non-silent delta, takes every delta after it (pauses inside a reply
keep their length) and ends once the track has been silent for
:attr:`~voiced.live.settings.LiveSettings.burst_tail_ms`; silence between bursts is not
played. Each burst is its own ``Play`` item whose start on the timeline is known, so the
played position the supervisor reports maps back onto the timeline exactly. A button
interrupt stops playback and drops non-silent output until the track has been quiet for
``interrupt_hold_ms`` (no truncate exists); what went unheard is kept as *cuts*.
"""

from __future__ import annotations

import logging
import math
import operator
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from voiced import wire
from voiced.core.effects import Play, StopPlayback
from voiced.live import wire as lw
from voiced.live.facts import LiveFacts, Out
from voiced.live.settings import RATE
from voiced.live.transcripts import Segment

logger = logging.getLogger("voiced.live.core")

MAX_BURSTS: Final = 16
_MAX_CUTS: Final = 16


@dataclass(slots=True)
class Burst:
    """One stretch of reply audio given to the speaker as one Play item."""

    id: str
    session: int  # the core's count of sessions: positions are that session's timeline
    start: int  # timeline samples where it begins
    queued: int = 0  # samples handed to the sink
    played: int | None = None  # samples the device played, once known
    quiet: int = 0  # samples of silence at its end so far
    closed: bool = False  # takes no more audio
    done: bool = False  # closed and played out (or stopped)


class Track:
    """The output track: bursts, the interrupt hold, and the cuts the user did not hear."""

    def __init__(self, facts: LiveFacts, out: Out) -> None:
        self.facts = facts
        self.out = out
        self.samples = 0  # output samples of this session so far
        self.burst: Burst | None = None
        self.bursts: deque[Burst] = deque()
        self.hold = False
        self._hold_quiet = 0
        # [session, start_ms, end_ms (-1: still running)] of output the user did not hear
        self.cuts: deque[list[int]] = deque()

    def speaking(self) -> bool:
        """A burst is open or audio is still queued."""
        return self.burst is not None or self.facts.queued

    def new_session(self) -> None:
        """A session started: its track starts at zero."""
        self.samples = 0
        self.hold = False

    def on_output(self, pcm: bytes, now: float) -> bool:
        """One output delta; True when the state may have changed (audio got queued)."""
        f = self.facts
        if f.phase not in ("open", "closing"):
            return False  # a session that is over (or never started) has nothing to say
        n = len(pcm) // wire.BYTES_PER_SAMPLE
        pos = self.samples
        self.samples += n
        if not n:
            return False
        settings = f.settings
        silent = _silent(pcm, settings.silence_rms)
        if self.hold:
            self._hold_quiet = self._hold_quiet + n if silent else 0
            if self._hold_quiet * 1000 >= settings.interrupt_hold_ms * RATE:
                self.hold = False
                if self.cuts and self.cuts[-1][2] < 0:
                    self.cuts[-1][2] = self.samples * 1000 // RATE
            if not silent:
                f.counters.output_dropped += 1
            return False
        if f.device_fault is not None:
            f.counters.output_dropped += 1
            return False
        burst = self.burst
        if burst is None:
            if silent:
                return False  # the track's silence between replies is not played
            burst = self.burst = Burst(id=f"{f.session_id}@{pos * 1000 // RATE}",
                                       session=f.session_no, start=pos)
            self.bursts.append(burst)
            f.end_spoke = f.end_at is not None
            # played-out bursts are forgotten; the sink's bound (audio.max_queued_s)
            # bounds the rest, and a hard cap holds even if it did not
            while len(self.bursts) > MAX_BURSTS and (self.bursts[0].done or len(
                    self.bursts) > 8 * MAX_BURSTS):
                self.bursts.popleft()
        if silent:
            burst.quiet += n
        else:
            burst.quiet = 0
            f.last_activity = now
        burst.queued += n
        was_queued, f.queued = f.queued, True
        self.out.emit(Play(pcm, burst.id))
        if burst.quiet * 1000 >= settings.burst_tail_ms * RATE:
            burst.closed = True
            self.burst = None
        return not was_queued

    def interrupt(self) -> None:
        """Stop playback; the played position comes with :meth:`on_stopped`."""
        self.facts.counters.interruptions += 1
        logger.info("interrupted: playback stopped, the rest of the reply is dropped")
        self.out.emit(StopPlayback())
        self.hold = True
        self._hold_quiet = 0
        # what arrives from here until the hold ends is not heard; the start moves back
        # to the played position when on_stopped reports it
        self.cuts.append([self.facts.session_no, self.samples * 1000 // RATE, -1])
        while len(self.cuts) > _MAX_CUTS:
            self.cuts.popleft()
        if self.burst is not None:
            self.burst.closed = True
            self.burst = None
        self.facts.queued = False

    def on_stopped(self, now: float, played: Mapping[str, int]) -> None:
        """Answer to :class:`StopPlayback`: samples of each burst the device played.

        Bursts absent from ``played`` were played in full.
        """
        f = self.facts
        f.queued = False
        f.mute_until = now + f.settings.echo_tail_ms / 1000
        for b in self.bursts:
            if not b.done:
                b.played = max(0, min(played.get(b.id, b.queued), b.queued))
                b.closed = b.done = True
                cut = self.cuts[-1] if self.cuts else None
                if b.played < b.queued and cut is not None and cut[0] == b.session:
                    cut[1] = min(cut[1], (b.start + b.played) * 1000 // RATE)
        if f.settings.tell_model_on_interrupt and f.phase == "open":
            self.out.send(lw.context_append(
                self.out.eid(), "thinking", "The user pressed the stop button while you "
                "were speaking and did not hear the rest of that reply. Do not go on with "
                "it unless they ask.", None))

    def on_drained(self, now: float) -> None:
        """Everything queued has been played."""
        f = self.facts
        if self.burst is not None:
            f.counters.underruns += 1  # the network fell behind real time
        f.queued = False
        f.mute_until = now + f.settings.echo_tail_ms / 1000
        for b in self.bursts:
            if not b.done:
                b.played = b.queued
                b.done = b.closed

    def on_full(self, item_id: str, refused: int) -> None:
        """The sink refused ``refused`` samples: that much of the burst is never heard."""
        self.facts.counters.playback_overflows += 1
        for b in self.bursts:
            if b.id == item_id:
                b.queued = max(0, b.queued - refused)

    def session_over(self) -> None:
        """The session ended: no burst takes more audio."""
        if self.burst is not None:
            self.burst.closed = True
            self.burst = None
        for b in self.bursts:
            b.closed = True
            b.done = b.done or not self.facts.queued

    def playing(self, seg: Segment, session: int) -> bool:
        """Some burst of ``session`` that began within the segment has not played out."""
        return any(b.session == session and not b.done
                   and b.start * 1000 // RATE < seg.end_ms for b in self.bursts)

    def heard_ms(self, seg: Segment, session: int) -> int:
        """Milliseconds of the segment's span that were played (bursts of its session)."""
        heard = 0
        for b in self.bursts:
            if b.session != session:
                continue
            start = b.start * 1000 // RATE
            end = start + (b.played or 0) * 1000 // RATE
            heard += max(0, min(end, seg.end_ms) - max(start, seg.start_ms))
        return min(heard, seg.end_ms - seg.start_ms)

    def interrupted(self, seg: Segment, session: int) -> bool:
        """Talked over, or cut by the button (output of its span went unheard)."""
        return seg.barged or any(n == session and s < seg.end_ms and (e < 0 or e > seg.start_ms)
                                 for n, s, e in self.cuts)


def _silent(pcm: bytes, floor: float) -> bool:
    """Digital silence, or an RMS at most ``floor``.

    Over every fourth sample: ten deltas a second on a small board, for a level, not a
    measurement.
    """
    if pcm.count(0) == len(pcm):
        return True
    a = memoryview(pcm).cast("h")[::4]
    return math.sqrt(sum(map(operator.mul, a, a)) / max(1, len(a))) <= floor
