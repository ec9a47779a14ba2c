"""The Live uplink: one append per mic frame while a session is open, and the burst.

The service's clock is the audio it receives, so while a session is open every mic frame
goes out: the user's audio when the mic is on, digital silence of the same length when it
is off (muted), while the assistant speaks in half duplex, and while the session closes.
Frames captured before ``session.started`` are kept (at most ``prestart_ms``) and sent as
a burst once it has come: the user's first words after the press.
"""

from __future__ import annotations

import logging
from collections import deque

from voiced import wire
from voiced.live import wire as lw
from voiced.live.facts import LiveFacts, Out
from voiced.live.settings import RATE

logger = logging.getLogger("voiced.live.core")


class Uplink:
    """Mic frames to appends (or silence), the pre-start backlog, the timeline count."""

    def __init__(self, facts: LiveFacts, out: Out) -> None:
        self.facts = facts
        self.out = out
        self._prestart: deque[bytes] = deque()
        self._prestart_samples = 0
        self._zeros = b""

    def on_frame(self, pcm: bytes, now: float, speaking: bool) -> bool:
        """One mic frame, whatever the mic state; True when it moved the timeline."""
        f = self.facts
        phase = f.phase
        if phase == "open" or phase == "closing":  # closing: the server finalizes on it
            live = (phase == "open" and f.mic_on
                    and not (f.settings.half_duplex and (speaking or now < f.mute_until)))
            self._append(pcm if live else self._silence(len(pcm)), live)
            return True
        if phase in ("connecting", "starting") and f.settings.prestart_ms > 0:
            self._keep(pcm if f.mic_on else self._silence(len(pcm)))
        return False

    def reset(self) -> None:
        """A new connection is asked for: nothing kept yet."""
        self._prestart.clear()
        self._prestart_samples = 0

    def send_prestart(self) -> None:
        """The session started: send what was said while it did."""
        frames, self._prestart = list(self._prestart), deque()
        self._prestart_samples = 0
        if frames:  # the user's first words, said while the session started
            logger.info("sending the %d ms said while the session started",
                        sum(map(len, frames)) * 500 // RATE)
        for pcm in frames:
            self._append(pcm, any(pcm))

    def _append(self, pcm: bytes, live: bool) -> None:
        n = len(pcm) // wire.BYTES_PER_SAMPLE
        self.facts.timeline += n
        ms = n * 1000 / RATE
        if live:
            self.facts.counters.audio_sent_ms += ms
        else:
            self.facts.counters.silence_sent_ms += ms
        self.out.send(lw.audio_append(pcm))

    def _silence(self, nbytes: int) -> bytes:
        if len(self._zeros) != nbytes:
            self._zeros = bytes(nbytes)
        return self._zeros

    def _keep(self, pcm: bytes) -> None:
        self._prestart.append(pcm)
        self._prestart_samples += len(pcm) // wire.BYTES_PER_SAMPLE
        limit = self.facts.settings.prestart_ms * RATE // 1000
        while self._prestart_samples > limit:
            self._prestart_samples -= len(self._prestart.popleft()) // wire.BYTES_PER_SAMPLE
            self.facts.counters.prestart_dropped += 1
