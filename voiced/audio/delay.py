"""Bulk echo delay: where the speaker's sound shows up in the mic, by envelope correlation.

Why: the echo canceller's adaptive filter models ``tail_ms`` (200 ms) of echo path, but a
device's speaker and mic buffering (ALSA plugins, PulseAudio, USB) can put the echo half
a second behind the position the speaker reports: no filter of that tail ever adapts,
and a longer tail costs CPU on every block and converges more slowly. So the bulk of the
delay is found first, coarsely, and the reference shifted by it; the filter then only
models the remainder and the room.

How: both signals are reduced to 10 ms energy envelopes (mean absolute value of every
4th sample), the speaker's by its absolute position, the mic's by the speaker position
its reference was paired with. The normalized correlation of the last ``window_s`` of
mic envelope against the speaker envelope at each lag up to ``max_delay_ms`` has its
peak at the bulk delay. Envelopes are cheap (pure Python, no numpy on the device) and
robust: a delay found to 10 ms is well inside the filter's tail. No estimate is made
without enough speaker sound in the window, nor when the peak is weak (no echo: a
headset, a muted speaker) or not distinct from the other lags.
"""

from __future__ import annotations

import array
import collections
import math
import sys
from typing import Final

from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

BIN: Final = SAMPLE_RATE // 100  # 10 ms of samples per envelope value
_DECIMATE: Final = 4  # every 4th sample is enough for an envelope


def envelope(pcm: bytes) -> float:
    """The mean absolute value of (every 4th sample of) PCM16 LE ``pcm``."""
    a = array.array("h", pcm[:len(pcm) // BYTES_PER_SAMPLE * BYTES_PER_SAMPLE])
    if sys.byteorder == "big":
        a.byteswap()
    part = a[::_DECIMATE]
    return sum(map(abs, part)) / len(part) if part else 0.0


class DelayEstimator:
    """Finds the bulk delay between the speaker's positions and its echo in the mic.

    Args:
        window_s: mic audio weighed in one estimate.
        max_delay_ms: the longest delay looked for.
        min_score: the normalized correlation a peak needs to count as an echo.
        active_level: a speaker envelope above this (mean |sample|) is sound.
        min_active: the share of the window's speaker envelope that must be sound.

    ``far`` runs on the speaker's thread, ``near`` and ``estimate`` on the mic's; the
    caller serializes them (the echo canceller's lock).
    """

    def __init__(self, *, window_s: float = 2.0, max_delay_ms: int = 1000,
                 min_score: float = 0.6, active_level: float = 100.0,
                 min_active: float = 0.4) -> None:
        self.window = int(window_s * 100)
        self.max_lag = max_delay_ms // 10
        self.min_score = min_score
        self.active_level = active_level
        self.min_active = min_active
        self._far_size = self.window + self.max_lag + 64
        self._far = [0.0] * self._far_size
        self._far_bin = [-1] * self._far_size  # which absolute bin each slot holds
        self._pend = bytearray()  # speaker samples of the bin being filled
        self._pend_bin = 0
        self._near: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=self.window)
        self.score = 0.0
        """The last estimate's peak correlation (0 before any)."""

    def far(self, pcm: bytes, position: int) -> None:
        """The speaker was given ``pcm`` from absolute sample ``position`` on."""
        if position != self._pend_bin * BIN + len(self._pend) // BYTES_PER_SAMPLE:
            # a jump (a gap, a restart): start the bin this audio falls in afresh
            skip = (-position) % BIN
            pcm, position = pcm[skip * BYTES_PER_SAMPLE:], position + skip
            self._pend = bytearray()
            self._pend_bin = position // BIN
        self._pend += pcm
        while len(self._pend) >= BIN * BYTES_PER_SAMPLE:
            slot = self._pend_bin % self._far_size
            self._far[slot] = envelope(bytes(self._pend[:BIN * BYTES_PER_SAMPLE]))
            self._far_bin[slot] = self._pend_bin
            del self._pend[:BIN * BYTES_PER_SAMPLE]
            self._pend_bin += 1

    def near(self, pcm: bytes, position: int) -> None:
        """Mic audio whose reference (without any delay) starts at speaker ``position``."""
        n = len(pcm) // BYTES_PER_SAMPLE
        for k in range(0, n - BIN + 1, BIN):
            env = envelope(pcm[k * BYTES_PER_SAMPLE:(k + BIN) * BYTES_PER_SAMPLE])
            self._near.append((round((position + k) / BIN), env))

    def _far_at(self, b: int) -> float:
        slot = b % self._far_size
        return self._far[slot] if self._far_bin[slot] == b else 0.0

    def reset(self) -> None:
        """Forget both histories (a new device, a restarted speaker)."""
        self._far = [0.0] * self._far_size
        self._far_bin = [-1] * self._far_size
        self._pend = bytearray()
        self._pend_bin = 0
        self._near.clear()
        self.score = 0.0

    def estimate(self) -> int | None:
        """The bulk delay in samples (a multiple of 10 ms), or None when not clear."""
        pairs = list(self._near)
        if len(pairs) < self.window // 2:
            return None
        m = [e for _, e in pairs]
        bins = [b for b, _ in pairs]
        # enough speaker sound that could have reached these mic bins
        span = [self._far_at(b - lag) for b in bins for lag in (0, self.max_lag // 2)]
        if sum(v > self.active_level for v in span) < self.min_active * len(span):
            return None
        n = len(m)
        sm = sum(m)
        smm = sum(v * v for v in m)
        vm = smm - sm * sm / n
        if vm <= 0:
            return None
        scores = []
        for lag in range(self.max_lag + 1):
            x = [self._far_at(b - lag) for b in bins]
            sx = sum(x)
            sxx = sum(v * v for v in x)
            sxm = sum(a * b for a, b in zip(x, m, strict=True))
            vx = sxx - sx * sx / n
            scores.append((sxm - sx * sm / n) / math.sqrt(vx * vm) if vx > 0 else 0.0)
        best = max(range(len(scores)), key=scores.__getitem__)
        self.score = scores[best]
        # distinct: a peak the lags more than 100 ms away do not come close to
        rest = [s for i, s in enumerate(scores) if abs(i - best) > 10]
        if self.score < self.min_score or (rest and max(rest) > 0.9 * self.score):
            return None
        return best * BIN
