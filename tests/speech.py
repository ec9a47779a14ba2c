"""Test input: the bundled spoken question, separated by pauses of room noise."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

from tests.conftest import QUESTION_WAV
from voiced.wire import SAMPLE_RATE


def question_24k() -> np.ndarray:
    """The bundled question (22.05 kHz WAV) at 24 kHz, int16."""
    with wave.open(str(QUESTION_WAV)) as w:
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    out: np.ndarray = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.int16)
    return out


def speech_with_pauses(path: Path, pauses_s: list[float], *, noise: int = 20,
                       seed: int = 7) -> list[tuple[float, float]]:
    """Write ``pause, question, pause, question, ..., pause`` to a 24 kHz mono WAV.

    The pauses hold faint room noise (uniform, ±``noise``), not digital silence.
    Returns the (start_s, end_s) of each question in the file.
    """
    rng = np.random.default_rng(seed)
    q = question_24k()
    parts: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    pos = 0
    for i, pause in enumerate(pauses_s):
        n = int(pause * SAMPLE_RATE)
        parts.append(rng.integers(-noise, noise + 1, n).astype(np.int16))
        pos += n
        if i < len(pauses_s) - 1:
            parts.append(q)
            spans.append((pos / SAMPLE_RATE, (pos + len(q)) / SAMPLE_RATE))
            pos += len(q)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.concatenate(parts).astype("<i2").tobytes())
    return spans
