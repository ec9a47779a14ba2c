"""A synthetic room for the echo canceller's tests and benchmark: speech from espeak-ng,
a room-like impulse response (a direct path after a delay, then a decaying diffuse tail),
and the figures an echo canceller is judged by.

Everything is deterministic: espeak-ng speaks the same text the same way, and the
impulse response comes from a seeded generator.
"""

from __future__ import annotations

import functools
import io
import math
import shutil
import subprocess
import wave

import numpy as np
import pytest
import soxr

from voiced.wire import SAMPLE_RATE

REPLY_TEXT = ("Sure. Here is a short story about a lighthouse keeper who lived on a small "
              "rocky island. Every night he climbed the long spiral stairs, lit the great "
              "lamp, and watched the ships pass safely by. One winter a storm knocked out "
              "the power, and he kept the fire burning by hand until morning.")
USER_TEXT = "Stop, wait a moment please. I have another question about the weather tomorrow."

VAD_FRAME = SAMPLE_RATE // 100  # the simulator's energy VAD judges 10 ms frames


@functools.cache
def espeak(text: str, voice: str = "en-us", speed: int = 165) -> np.ndarray:
    """``text`` spoken by espeak-ng, int16 at 24 kHz; skips the test without espeak-ng."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (scripts/setup.sh installs it)")
    wav = subprocess.run([exe, "-v", voice, "-s", str(speed), "--stdout", text],
                         capture_output=True, timeout=60, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    out: np.ndarray = soxr.resample(pcm, rate, SAMPLE_RATE).astype(np.int16)
    out.flags.writeable = False  # cached and shared between tests: nobody may change it
    return out


def impulse_response(delay_ms: float, gain: float, *, rt60_s: float = 0.15,
                     length_ms: float = 120, seed: int = 1) -> np.ndarray:
    """A room from speaker to mic: silence for ``delay_ms``, a direct path, then
    exponentially decaying diffuse reflections (-60 dB after ``rt60_s``); scaled so the
    whole response has energy gain ``gain`` (amplitude)."""
    rng = np.random.default_rng(seed)
    n = int(length_ms * SAMPLE_RATE / 1000)
    t = np.arange(n) / SAMPLE_RATE
    h = rng.standard_normal(n) * np.exp(-math.log(1000) * t / rt60_s) * 0.25
    h[0] = 1.0
    h = np.concatenate([np.zeros(int(delay_ms * SAMPLE_RATE / 1000)), h])
    out: np.ndarray = h / math.sqrt(float(np.sum(h ** 2))) * gain
    return out


def echo_of(far: np.ndarray, h: np.ndarray) -> np.ndarray:
    """What the mic hears of ``far`` through ``h`` (float, same length as ``far``)."""
    out: np.ndarray = np.convolve(far.astype(np.float64), h)[:len(far)]
    return out


def to_pcm(x: np.ndarray) -> np.ndarray:
    """Float samples to int16, clipped."""
    out: np.ndarray = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    return out


def noise(n: int, level: float = 3.0, seed: int = 2) -> np.ndarray:
    """A mic's self-noise floor (about -80 dBFS by default)."""
    out: np.ndarray = np.random.default_rng(seed).standard_normal(n) * level
    return out


def erle_db(echo: np.ndarray, residual: np.ndarray) -> float:
    """Echo return loss enhancement: how much quieter the echo is after the canceller."""
    e = float(np.sum(echo.astype(np.float64) ** 2))
    r = float(np.sum(residual.astype(np.float64) ** 2))
    return 10 * math.log10(e / max(r, 1e-9))


def loudest_10ms_dbfs(x: np.ndarray) -> float:
    """The level of the loudest 10 ms frame (the simulator's VAD compares each frame's
    RMS with its threshold: -40 dBFS at threshold 0.5)."""
    whole = len(x) // VAD_FRAME * VAD_FRAME
    frames = x[:whole].astype(np.float64).reshape(-1, VAD_FRAME)
    rms = float(np.sqrt((frames ** 2).mean(axis=1)).max())
    return 20 * math.log10(max(rms, 1e-9) / 32768)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long signals."""
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def cancel(aec: object, mic: np.ndarray, far: np.ndarray, *, frame: int | None = None,
           ahead: int = 0, lag: np.ndarray | None = None) -> np.ndarray:
    """Run ``aec`` (an EchoCanceller) over a whole recording as the daemon would.

    Before each mic block is cleaned, the speaker has been given everything up to the
    block's end plus ``ahead`` samples (its device buffer), and the position reported
    with the block is that, less ``lag[k]`` samples (a snapshot taken early: callbacks'
    timing noise), never more than the speaker was given.
    """
    from voiced.audio.aec import EchoCanceller

    assert isinstance(aec, EchoCanceller)
    frame = frame or aec.frame
    out = []
    handed = 0  # the speaker's position: what it has been given so far
    for k, i in enumerate(range(0, len(mic) - frame + 1, frame)):
        end = i + frame + ahead
        if end > handed:
            aec.played(far[handed:end].tobytes(), handed)
            handed = end
        played = end - (int(lag[k % len(lag)]) if lag is not None else 0)
        out.append(np.frombuffer(aec.process(mic[i:i + frame].tobytes(), played), "<i2"))
    return np.concatenate(out)
