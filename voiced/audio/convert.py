"""PCM conversion: any rate and channel count to 24 kHz mono PCM16, and back.

Resampling uses libsoxr's streaming API, which keeps filter state across chunks, so a
stream converted chunk by chunk equals the whole signal converted at once (no clicks at
chunk borders, unlike per-chunk FFT or linear resampling). Channel picking, downmixing and
duplicating work on the bytes with memoryview slices and big-integer arithmetic, both in
C, so the daemon needs no numpy (docs/architecture.md).
"""

from __future__ import annotations

import functools

from voiced.audio.libsoxr import Resampler
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

# soxr's LQ filter: 16-bit quality, ample for speech at 24 kHz, and it holds back only
# 1.25 ms at 48 kHz (5.5 ms at 44.1 kHz) where HQ holds 31.7 ms, latency that every
# mic frame and every reply would carry (measured with bench/audio_bench.py).
QUALITY = "LQ"


class ToWire:
    """Converts interleaved PCM16 at ``rate`` with ``channels`` into 24 kHz mono PCM16.

    Args:
        rate: the device's or file's sample rate.
        channels: interleaved channel count.
        channel: which channel to keep; None averages all channels.
    """

    def __init__(self, rate: int, channels: int = 1, channel: int | None = None) -> None:
        if channel is not None and not 0 <= channel < channels:
            raise ValueError(f"channel {channel} does not exist (the device has {channels})")
        self.rate = rate
        self.channels = channels
        self.channel = channel
        self._rs = None if rate == SAMPLE_RATE else Resampler(rate, SAMPLE_RATE,
                                                              quality=QUALITY)

    def convert(self, data: bytes, *, last: bool = False) -> bytes:
        """Convert one chunk; pass ``last=True`` with the final chunk to flush the filter."""
        if self.channels > 1:
            data = (pick_channel(data, self.channels, self.channel) if self.channel is not None
                    else downmix(data, self.channels))
        if self._rs is not None:
            data = self._rs.process(data, last=last)
        return data


class FromWire:
    """Converts 24 kHz mono PCM16 into interleaved PCM16 at a device's rate and channels."""

    def __init__(self, rate: int, channels: int = 1) -> None:
        self.rate = rate
        self.channels = channels
        self._rs = None if rate == SAMPLE_RATE else Resampler(SAMPLE_RATE, rate,
                                                              quality=QUALITY)

    def convert(self, data: bytes, *, last: bool = False) -> bytes:
        """Convert one chunk; ``last=True`` flushes the resampler."""
        if self._rs is not None:
            data = self._rs.process(data, last=last)
        if self.channels > 1:
            data = duplicate(data, self.channels)
        return data

    def reset(self) -> None:
        """Forget the filter's history (after an interruption: no old tail leaks out)."""
        if self._rs is not None:
            self._rs.clear()


def _samples(data: bytes, channels: int) -> memoryview:
    """The whole sample frames of interleaved PCM16 as a memoryview of int16.

    Native byte order: like the SWAR downmix below, this assumes a little-endian host
    (every Raspberry Pi, x86, and arm64 as Linux runs it).
    """
    whole = len(data) // (BYTES_PER_SAMPLE * channels) * BYTES_PER_SAMPLE * channels
    return memoryview(data)[:whole].cast("h")


def pick_channel(data: bytes, channels: int, channel: int) -> bytes:
    """One channel of interleaved PCM16."""
    return _samples(data, channels)[channel::channels].tobytes()


def duplicate(mono: bytes, channels: int) -> bytes:
    """Mono PCM16 copied into every channel of an interleaved stream."""
    src = _samples(mono, 1)
    out = bytearray(len(src) * BYTES_PER_SAMPLE * channels)
    view = memoryview(out).cast("h")
    for c in range(channels):
        view[c::channels] = src
    return bytes(out)


@functools.lru_cache(maxsize=8)
def _lane_masks(samples: int) -> tuple[int, int, int]:
    """Per-16-bit-lane masks as big integers: sign bits, all bits but the top, lowest bit."""
    return (int.from_bytes(b"\x00\x80" * samples, "little"),
            int.from_bytes(b"\xff\x7f" * samples, "little"),
            int.from_bytes(b"\x01\x00" * samples, "little"))


def downmix(data: bytes, channels: int) -> bytes:
    """The average of all channels of interleaved PCM16 as mono, rounded half to even.

    As numpy's rint; rounding down would add a DC offset of -0.25 LSB.
    """
    view = _samples(data, channels)
    if channels != 2:  # only WAV files get here (a device is opened mono or stereo)
        cols = [view[c::channels] for c in range(channels)]
        return b"".join(round(sum(v) / channels).to_bytes(2, "little", signed=True)
                        for v in zip(*cols, strict=True))
    # Stereo, all lanes at once: each 16-bit lane of a big integer holds one sample, in
    # offset binary (sign bit flipped) so lanes are unsigned; the offset is even, so a
    # lane's parity is the sample's. floor((a + b) / 2) is (a & b) + ((a ^ b) >> 1) per
    # lane; the shift's bit from the next lane is masked off, and the sum fits in its
    # lane. A half (a ^ b odd) on an odd floor rounds up: that floor is at most 65534,
    # so the +1 stays in its lane too.
    n = len(view) // 2
    sign, low, one = _lane_masks(n)
    a = int.from_bytes(view[0::2].tobytes(), "little") ^ sign
    b = int.from_bytes(view[1::2].tobytes(), "little") ^ sign
    floor = (a & b) + (((a ^ b) >> 1) & low)
    return ((floor + ((a ^ b) & floor & one)) ^ sign).to_bytes(2 * n, "little")


class Framer:
    """Cuts a byte stream into frames of exactly ``frame_bytes``."""

    def __init__(self, frame_bytes: int) -> None:
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        """Add data; return the whole frames now available."""
        self._buf += data
        n = len(self._buf) // self.frame_bytes * self.frame_bytes
        if not n:
            return []
        out = [bytes(self._buf[i:i + self.frame_bytes]) for i in range(0, n, self.frame_bytes)]
        del self._buf[:n]
        return out

    def pending_samples(self) -> int:
        """24 kHz PCM16 samples held back for the next frame."""
        return len(self._buf) // BYTES_PER_SAMPLE


def frame_bytes(frame_ms: int) -> int:
    """Bytes in one frame of ``frame_ms`` at 24 kHz mono PCM16."""
    return SAMPLE_RATE * frame_ms // 1000 * BYTES_PER_SAMPLE


def to_int16(raw: bytes, sampwidth: int) -> bytes:
    """Convert little-endian integer PCM of 1-4 bytes per sample to PCM16 LE.

    Raises:
        ValueError: for an unsupported sample width.
    """
    if sampwidth == 2:
        return raw
    if sampwidth not in (1, 3, 4):
        raise ValueError(f"unsupported sample width {sampwidth} bytes")
    n = len(raw) // sampwidth
    out = bytearray(2 * n)
    if sampwidth == 1:  # WAV 8-bit is unsigned: flip the sign bit, make it the high byte
        out[1::2] = raw[:n].translate(_FLIP_SIGN)
    else:  # 24 and 32 bits: keep the two high bytes
        out[0::2] = raw[sampwidth - 2:n * sampwidth:sampwidth]
        out[1::2] = raw[sampwidth - 1:n * sampwidth:sampwidth]
    return bytes(out)


_FLIP_SIGN = bytes(b ^ 0x80 for b in range(256))
