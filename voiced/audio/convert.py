"""PCM conversion: any rate and channel count to 24 kHz mono PCM16, and back.

Resampling uses soxr's streaming API, which keeps filter state across chunks, so a
stream converted chunk by chunk equals the whole signal converted at once (no clicks at
chunk borders, unlike per-chunk FFT or linear resampling).
"""

from __future__ import annotations

import numpy as np
import soxr

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
        self._rs = (None if rate == SAMPLE_RATE
                    else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="int16", quality=QUALITY))

    def convert(self, data: bytes, *, last: bool = False) -> bytes:
        """Convert one chunk; pass ``last=True`` with the final chunk to flush the filter."""
        a = np.frombuffer(data, dtype="<i2")
        if self.channels > 1:
            a = a[: len(a) - len(a) % self.channels].reshape(-1, self.channels)
            if self.channel is not None:
                a = np.ascontiguousarray(a[:, self.channel])
            else:
                a = np.round(a.mean(axis=1)).astype("<i2")
        if self._rs is not None:
            a = self._rs.resample_chunk(a, last=last)
        return a.astype("<i2", copy=False).tobytes()


class FromWire:
    """Converts 24 kHz mono PCM16 into interleaved PCM16 at a device's rate and channels."""

    def __init__(self, rate: int, channels: int = 1) -> None:
        self.rate = rate
        self.channels = channels
        self._rs = (None if rate == SAMPLE_RATE
                    else soxr.ResampleStream(SAMPLE_RATE, rate, 1, dtype="int16", quality=QUALITY))

    def convert(self, data: bytes, *, last: bool = False) -> bytes:
        """Convert one chunk; ``last=True`` flushes the resampler."""
        a = np.frombuffer(data, dtype="<i2")
        if self._rs is not None:
            a = self._rs.resample_chunk(a, last=last)
        if self.channels > 1:
            a = np.repeat(a, self.channels)
        return a.astype("<i2", copy=False).tobytes()

    def reset(self) -> None:
        """Forget the filter's history (after an interruption: no old tail leaks out)."""
        if self._rs is not None:
            self._rs.clear()


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
    if sampwidth == 1:  # WAV 8-bit is unsigned
        return ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(
            "<i2").tobytes()
    if sampwidth == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        return np.ascontiguousarray(b[:, 1:]).tobytes()  # keep the two high bytes
    if sampwidth == 4:
        return (np.frombuffer(raw, dtype="<i4") >> 16).astype("<i2").tobytes()
    raise ValueError(f"unsupported sample width {sampwidth} bytes")
