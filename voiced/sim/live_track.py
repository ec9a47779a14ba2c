"""The simulated Live model's output stream: what it says, queued on the output timeline.

The service sends one continuous output track, 100 ms a delta, zeros while the model is
quiet; its transcript fragments start and end on a 200 ms grid, sent as the audio they
describe goes out. Speech and fixtures are queued one after the other; the model stops
itself (everything queued dropped) when the user talks over it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from voiced.sim.responses import pieces
from voiced.wire import SAMPLE_RATE

BYTES_PER_MS = SAMPLE_RATE * 2 // 1000
FRAME_MS = 100
"""Output audio per ``session.output_audio.delta``."""
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
GRID_MS = 200
"""Transcript fragments start and end on this grid, as the service's do."""


def grid_floor(ms: float) -> int:
    """``ms`` down to the 200 ms grid."""
    return int(ms // GRID_MS) * GRID_MS


def timed_pieces(text: str, start_ms: int, end_ms: int) -> list[tuple[str, int, int]]:
    """``text`` as word-aligned fragments spread over [start_ms, end_ms] on the grid.

    Each fragment covers at least one 200 ms cell; fragments join back to ``text``.
    """
    start = grid_floor(start_ms)
    cells = max(1, math.ceil((end_ms - start) / GRID_MS))
    words = pieces(text, max(1, min(len(text.split()), cells)))
    out = []
    for i, piece in enumerate(words):
        first = i * cells // len(words)
        last = max(first + 1, (i + 1) * cells // len(words))
        out.append((piece, start + first * GRID_MS, start + last * GRID_MS))
    return out


@dataclass
class Speech:
    """Something the model says, as a span of the output stream (byte positions)."""

    start: int
    end: int
    reply: bool  # a reply (the drop fault may cut it halfway)
    fixture: str | None = None  # a fixture's client event id ("" when it had none)
    half_checked: bool = False


class Track:
    """The output audio queued, the speeches it is made of, their timed words."""

    def __init__(self) -> None:
        self.out_pos = 0  # output audio bytes sent
        self.speaker = bytearray()  # output audio queued (model speech, fixtures)
        self.speeches: deque[Speech] = deque()
        self._words: deque[tuple[int, str, int, int]] = deque()  # (position, text, ms, ms)
        self.said: list[str] = []  # what the model spoke, in order

    def model_speaking(self) -> bool:
        """The model (not a fixture) has speech queued."""
        return any(s.fixture is None for s in self.speeches)

    def fixture_playing(self) -> bool:
        """A fixture is queued or playing."""
        return any(s.fixture is not None for s in self.speeches)

    def stop(self) -> None:
        """The model stops itself: what it had queued is never said."""
        self.speaker.clear()
        self.speeches.clear()
        self._words.clear()

    def enqueue(self, pcm: bytes, text: str, *, reply: bool,
                fixture: str | None = None) -> None:
        """Queue speech (or a fixture) after what is queued, its words timed to its audio."""
        start = self.out_pos + len(self.speaker)
        self.speaker += pcm
        self.speeches.append(Speech(start, start + len(pcm), reply, fixture))
        if text:
            self.said.append(text)
            for piece, s, e in timed_pieces(text, start // BYTES_PER_MS,
                                            (start + len(pcm)) // BYTES_PER_MS):
                self._words.append((max(start, s * BYTES_PER_MS), piece, s, e))

    def frame(self) -> bytes:
        """The next 100 ms of output (zeros where nothing is queued)."""
        chunk = bytes(self.speaker[:FRAME_BYTES])
        del self.speaker[:FRAME_BYTES]
        chunk += bytes(FRAME_BYTES - len(chunk))
        self.out_pos += FRAME_BYTES
        return chunk

    def words_out(self) -> list[tuple[str, int, int]]:
        """The transcript fragments whose audio has gone out: (text, start_ms, end_ms)."""
        out = []
        while self._words and self._words[0][0] < self.out_pos:
            _, text, start_ms, end_ms = self._words.popleft()
            out.append((text, start_ms, end_ms))
        return out
