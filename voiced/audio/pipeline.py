"""The speaker and mic paths around the devices: earcons mixed in, echo cancelled.

Both hooks run on the devices' own threads (PortAudio's callbacks), where the timing is
true: ``SpeakerMix`` is a sink's ``output_filter`` and sees exactly what each period
hands the device; it mixes pending earcons into it (so they play through the same sink
as replies, are part of the echo canceller's reference, and never pass the mic path),
then gives the result to the echo canceller with its position. ``EchoFilter`` is a
source's ``frame_filter`` and cleans each mic frame with the speaker's position at the
moment the frame was read.

Nothing here blocks or allocates much per period: a lock held for a few slices, and a
mix of earcon samples in plain Python only while one plays.
"""

from __future__ import annotations

import array
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from voiced import guard
from voiced.audio.aec import EchoCanceller
from voiced.audio.convert import FromWire, ToWire
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

logger = logging.getLogger(__name__)

_GAP_SAMPLES = SAMPLE_RATE * 30 // 1000  # a later period than this is a pause, not jitter


def mix_pcm16(base: bytes, add: bytes) -> bytes:
    """``base`` with ``add`` summed onto its start, clipped to 16 bits (PCM16 LE)."""
    n = min(len(base), len(add)) // BYTES_PER_SAMPLE
    if not n:
        return base
    a = array.array("h", base[:n * BYTES_PER_SAMPLE])
    b = array.array("h", add[:n * BYTES_PER_SAMPLE])
    if sys.byteorder == "big":
        a.byteswap()
        b.byteswap()
    out = array.array("h", (max(-32768, min(32767, x + y)) for x, y in zip(a, b,
                                                                          strict=True)))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes() + base[n * BYTES_PER_SAMPLE:]


class SpeakerMix:
    """A sink's ``output_filter``: earcons mixed in, the echo canceller's reference out.

    Args:
        sink: the speaker (its ``rate`` and ``channels``; 24 kHz mono when it has none).
        echo: the echo canceller that gets what is played, or None.
    """

    def __init__(self, sink: Any, echo: EchoCanceller | None = None) -> None:
        self._sink = sink
        self.echo = echo
        self._lock = threading.Lock()
        self._overlay = bytearray()  # earcon audio in the device's format, not yet played
        self._format: tuple[int, int] = (0, 0)
        self._to_wire: ToWire | None = None
        self.position = 0
        """24 kHz samples handed to the device so far, silence included, plus the time
        it played nothing (a stopped stream, an underrun; by PortAudio's DAC times): the
        echo canceller's timeline, read by the mic when each frame is captured."""
        self.earcon_samples = 0
        """24 kHz earcon samples queued so far (tests, status)."""
        # the newest period's first position and when it plays (PortAudio's DAC time);
        # one tuple, replaced whole, read by the mic's thread
        self._clock: tuple[int, float] | None = None
        self.gaps = 0
        """Times a period played later than the timeline said (a stream stopped while
        idle and started again, an underrun): the position jumped by the time between."""

    def position_at(self, when: float) -> int | None:
        """The speaker position playing at PortAudio stream time ``when``.

        None when the sink gives no DAC times. Positions advance at 24 kHz from the
        newest timed period, through a stopped stream too (see ``__call__``); before
        the first period plays they are negative (nothing played: silence).
        """
        clock = self._clock
        if clock is None or when <= 0:
            return None
        return clock[0] + round((when - clock[1]) * SAMPLE_RATE)

    def _device_format(self) -> tuple[int, int]:
        return (int(getattr(self._sink, "rate", SAMPLE_RATE)),
                int(getattr(self._sink, "channels", 1)))

    def add(self, pcm: bytes) -> None:
        """Play 24 kHz PCM16 mono over whatever else plays (on the loop; never blocks)."""
        rate, channels = self._device_format()
        conv = FromWire(rate, channels)
        data = conv.convert(pcm) + conv.convert(b"", last=True)
        with self._lock:
            # at most 2 s pending: a burst of events must not pile sounds up
            room = rate * channels * BYTES_PER_SAMPLE * 2 - len(self._overlay)
            self._overlay += data[:max(0, room)]
        self.earcon_samples += len(pcm) // BYTES_PER_SAMPLE
        # a speaker stopped while idle (issue 21) must run while the earcon plays
        keep_awake = getattr(self._sink, "keep_awake", None)
        if keep_awake is not None:
            keep_awake(len(self._overlay) / (rate * channels * BYTES_PER_SAMPLE))

    @property
    def playing(self) -> bool:
        """Earcon audio is still waiting to be handed to the device."""
        return bool(self._overlay)

    def clear(self) -> None:
        """Drop the earcon audio not played yet and the speaker's clock (a device reopened).

        A new stream's DAC times are no continuation of the old one's.
        """
        with self._lock:
            self._overlay.clear()
        self._clock = None

    def __call__(self, out: bytes) -> bytes:
        """One period for the device (PortAudio's thread): mixed, and given to the AEC."""
        if self._overlay:
            with self._lock:
                take = bytes(self._overlay[:len(out)])
                del self._overlay[:len(out)]
            out = mix_pcm16(out, take)
        if self.echo is not None:
            with guard.contain("echo reference", logger):
                fmt = self._device_format()
                if fmt != self._format or self._to_wire is None:
                    self._format = fmt
                    self._to_wire = ToWire(*fmt)
                wire = self._to_wire.convert(out)
                if wire:
                    dac = float(getattr(self._sink, "dac_time", 0.0) or 0.0)
                    if dac > 0:
                        self._keep_time(dac)
                    self.echo.played(wire, self.position)
                    self.position += len(wire) // BYTES_PER_SAMPLE
        return out

    def _keep_time(self, dac: float) -> None:
        """This period plays at ``dac``: positions and time on one timeline.

        On the speaker's thread. A period that plays later than the previous one's time
        and length say (the stream was stopped while idle and started again, or a
        callback came too late) means the
        device played nothing meanwhile: the position jumps by that time, so the pause is
        silence in the echo canceller's reference and the mic keeps its pairing with what
        plays (without it the timed position ran on through the pause and then fell back
        to the count: the reference moved 14 times between two replies through `voiced
        run`, and the second reply's echo passed the convergence gate).
        """
        clock = self._clock
        if clock is not None:
            expected = clock[1] + (self.position - clock[0]) / SAMPLE_RATE
            gap = round((dac - expected) * SAMPLE_RATE)
            if gap > _GAP_SAMPLES:  # below it, the DAC times' own jitter
                self.position += gap
                self.gaps += 1
                # across an underrun PulseAudio's ALSA plugin put the echo 30 ms from
                # where the DAC times said (through voiced run): re-measure, gated
                if self.echo is not None:
                    self.echo.path_moved()
                skipped = guard.should_log("speaker gap")
                if skipped is not None:
                    logger.info("speaker played nothing for %d ms (a stream started again, "
                                "or an underrun): silence in the echo reference (%d more "
                                "not logged)", gap * 1000 // SAMPLE_RATE, skipped)
        self._clock = (self.position, dac)


class EchoFilter:
    """A source's ``frame_filter``: each mic frame without the speaker's echo.

    A frame the canceller refuses (a length it cannot take) or an unexpected fault
    passes unchanged: the mic must never go silent because of the canceller.
    """

    def __init__(self, echo: EchoCanceller, mix: SpeakerMix, source: Any = None) -> None:
        self.echo = echo
        self.mix = mix
        self._source = source
        self.timed = 0
        """Frames paired with the speaker by PortAudio's timestamps (the rest by count)."""
        self.lead = 0
        """Samples the handed count ran ahead of the timed position, at the last frame."""

    def __call__(self, frame: bytes) -> bytes:
        """The cleaned frame (PortAudio's mic thread).

        The speaker position the frame is paired with is the one playing when the frame's
        last sample was captured, by PortAudio's DAC and ADC times where both devices
        give them; otherwise the count handed to the speaker when this runs (which adds
        however late the mic callback runs and however full its buffer is).
        """
        with guard.contain("echo cancellation", logger):
            played = self.mix.position_at(float(getattr(self._source, "adc_time", 0.0)
                                                or 0.0))
            if played is None:
                return self.echo.process(frame, self.mix.position)
            self.timed += 1
            self.lead = self.mix.position - played
            return self.echo.process(frame, played, timed=True)
        return frame


def build_echo(frame_ms: int, on_bypass: Callable[[bool, str], None]) -> EchoCanceller:
    """The canceller for ``audio.echo: aec``, on the daemon's mic frames."""
    block = 20 if frame_ms % 20 == 0 else 10
    # the bulk delay is estimated (up to 1 s, voiced/audio/delay.py): device buffering
    # put the echo 520 ms behind the speaker's reported position through PulseAudio
    return EchoCanceller(frame_ms=block, tail_ms=200, on_bypass=on_bypass,
                         max_delay_ms=1000, gate=True)
