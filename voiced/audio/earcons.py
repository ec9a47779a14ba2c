"""Earcons: short sounds made in code (no files) that say what the device just did.

Each is a few sine notes at 24 kHz PCM16 mono, in the band small speakers reproduce
(about 500-1600 Hz), with a second harmonic so they stay audible on a tiny cone. Every
note starts and ends with a raised-cosine fade, so nothing clicks, and every earcon
starts and ends with a few milliseconds of silence. They differ in contour, not only in
pitch, so they can be told apart without hearing them side by side:

- ``listening_started``: two notes up (a question being opened);
- ``listening_stopped``: the same two notes down;
- ``reconnected``: three notes up a major chord (all is well again);
- ``error``: two low, buzzy notes on one pitch;
- ``new_conversation``: one smooth upward glide (a clean page).

``render(name, gain)`` scales the peak linearly: ``gain`` 1.0 peaks at half of full
scale, leaving the speaker volume (applied by the caller) the headroom.
"""

from __future__ import annotations

import array
import functools
import math
import sys
from typing import Final

from voiced.wire import SAMPLE_RATE

EARCONS: Final = ("listening_started", "listening_stopped", "reconnected", "error",
                  "new_conversation")
PEAK: Final = 0.5  # of full scale, at gain 1.0
FADE_MS: Final = 8.0  # each note's fade in and out
EDGE_MS: Final = 5.0  # silence before and after each earcon
MAX_MS: Final = 400.0

# (start Hz, end Hz, ms) per note, a gap (ms) between notes; a note whose start and end
# differ glides between them (exponentially: even in pitch)
_Notes = tuple[tuple[float, float, float], ...]
_SHAPES: Final[dict[str, tuple[_Notes, float, float]]] = {
    # name: (notes, gap ms, second harmonic's share)
    "listening_started": (((660.0, 660.0, 90.0), (880.0, 880.0, 110.0)), 25.0, 0.15),
    "listening_stopped": (((880.0, 880.0, 90.0), (660.0, 660.0, 110.0)), 25.0, 0.15),
    "reconnected": (((523.25, 523.25, 75.0), (659.25, 659.25, 75.0),
                     (783.99, 783.99, 110.0)), 20.0, 0.15),
    "error": (((415.3, 415.3, 110.0), (415.3, 415.3, 130.0)), 60.0, 0.45),
    "new_conversation": (((440.0, 1320.0, 260.0),), 0.0, 0.15),
}


def _note(f0: float, f1: float, ms: float, harmonic: float) -> list[float]:
    """One faded note, peak 1.0; its phase starts at 0 and it ends on a fade to 0."""
    n = round(ms * SAMPLE_RATE / 1000)
    fade = round(FADE_MS * SAMPLE_RATE / 1000)
    out = []
    phase = 0.0
    norm = 1.0 / (1.0 + harmonic)
    for i in range(n):
        f = f0 * (f1 / f0) ** (i / max(1, n - 1))
        phase += 2 * math.pi * f / SAMPLE_RATE
        env = 1.0
        if i < fade:
            env = 0.5 - 0.5 * math.cos(math.pi * i / fade)
        elif i >= n - fade:
            env = 0.5 - 0.5 * math.cos(math.pi * (n - 1 - i) / fade)
        out.append(env * norm * (math.sin(phase) + harmonic * math.sin(2 * phase)))
    return out


@functools.cache
def _shape(name: str) -> tuple[float, ...]:
    notes, gap_ms, harmonic = _SHAPES[name]
    edge = [0.0] * round(EDGE_MS * SAMPLE_RATE / 1000)
    gap = [0.0] * round(gap_ms * SAMPLE_RATE / 1000)
    samples: list[float] = list(edge)
    for i, (f0, f1, ms) in enumerate(notes):
        if i:
            samples += gap
        samples += _note(f0, f1, ms, harmonic)
    samples += edge
    peak = max(abs(x) for x in samples)
    return tuple(x / peak for x in samples)


@functools.lru_cache(maxsize=32)
def render(name: str, gain: float = 1.0) -> bytes:
    """The earcon ``name`` as 24 kHz PCM16 mono, its peak ``gain`` x PEAK of full scale.

    Raises:
        ValueError: an unknown name, or a gain outside 0..1.
    """
    if name not in _SHAPES:
        raise ValueError(f"unknown earcon {name!r} (one of {', '.join(EARCONS)})")
    if not 0.0 <= gain <= 1.0:
        raise ValueError(f"earcon gain must be 0..1, not {gain}")
    scale = gain * PEAK * 32767
    pcm = array.array("h", (round(x * scale) for x in _shape(name)))
    if sys.byteorder == "big":
        pcm.byteswap()  # PCM16 LE on the wire and in the sink
    return pcm.tobytes()


def duration_ms(name: str) -> float:
    """How long ``name`` lasts."""
    return len(render(name, 0.0)) / 2 / SAMPLE_RATE * 1000
