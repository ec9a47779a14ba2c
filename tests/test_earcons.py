"""Earcons (voiced/audio/earcons.py): short, click-free, distinct, scaled by the gain."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voiced.audio import earcons
from voiced.audio.earcons import EARCONS, PEAK, duration_ms, render
from voiced.wire import SAMPLE_RATE


def pcm(name: str, gain: float = 1.0) -> np.ndarray:
    return np.frombuffer(render(name, gain), "<i2").astype(np.float64)


def pitch_contour(x: np.ndarray, window_ms: float = 20) -> list[float]:
    """The strongest frequency in each window where there is sound (Hz, rounded to the
    window's resolution; 0 for silence)."""
    n = int(window_ms * SAMPLE_RATE / 1000)
    out = []
    for i in range(0, len(x) - n + 1, n):
        w = x[i:i + n] * np.hanning(n)
        if np.sqrt(np.mean(x[i:i + n] ** 2)) < 0.05 * PEAK * 32767:
            out.append(0.0)
            continue
        spec = np.abs(np.fft.rfft(w, 8 * n))
        out.append(float(np.argmax(spec) * SAMPLE_RATE / (8 * n)))
    return out


@pytest.mark.parametrize("name", EARCONS)
def test_each_is_short_and_starts_and_ends_in_silence(name: str) -> None:
    x = pcm(name)
    assert 100 <= len(x) / SAMPLE_RATE * 1000 == duration_ms(name) < 400
    assert np.abs(x).max() == pytest.approx(PEAK * 32767, abs=1)
    edge = int(earcons.EDGE_MS * SAMPLE_RATE / 1000)
    assert not x[:edge].any() and not x[-edge:].any()  # silence around it
    fade = int(earcons.FADE_MS * SAMPLE_RATE / 1000)
    # the first and last sounding samples are tiny: a fade, not a step
    sounding = np.nonzero(x)[0]
    assert abs(x[sounding[0]]) < 0.01 * 32767 and abs(x[sounding[-1]]) < 0.01 * 32767
    # a raised cosine is at 15 % a quarter of the way in
    assert np.abs(x[edge:edge + fade // 4]).max() < 0.16 * PEAK * 32767


@pytest.mark.parametrize("name", EARCONS)
def test_no_discontinuity(name: str) -> None:
    """A click is a jump: the second difference of a smooth tone is at most
    (2 pi f / rate)^2 of its amplitude (0.12 at 1320 Hz); a step is the step itself."""
    x = pcm(name) / 32767
    curvature = np.abs(np.diff(x, 2)).max()
    assert curvature < 0.25 * PEAK, curvature
    # and the slope stays within what the highest note (with its harmonic) can have
    assert np.abs(np.diff(x)).max() < 2 * np.pi * 2 * 1320 / SAMPLE_RATE * PEAK


def test_a_step_would_have_been_caught() -> None:
    """The discontinuity test can fail: the same earcon with its fade cut off."""
    x = pcm("listening_started") / 32767
    sounding = np.nonzero(x)[0]
    cut = x.copy()
    cut[sounding[0]:sounding[0] + 200] = 0  # starts mid-wave, at full level
    assert np.abs(np.diff(cut, 2)).max() >= 0.25 * PEAK


def test_they_differ_in_contour() -> None:
    contours = {name: pitch_contour(pcm(name)) for name in EARCONS}
    for a, b in itertools.combinations(EARCONS, 2):
        assert contours[a] != contours[b], (a, b)
    # the contours say what they should: up, down, up a chord, flat and low, a glide
    def notes(c: list[float]) -> list[float]:
        return [f for f in c if f]
    up, down = notes(contours["listening_started"]), notes(contours["listening_stopped"])
    assert up[0] < up[-1] and down[0] > down[-1]
    chord = notes(contours["reconnected"])
    assert chord[0] < chord[len(chord) // 2] < chord[-1]
    err = notes(contours["error"])
    assert max(err) - min(err) < 30 and max(err) < 500
    glide = notes(contours["new_conversation"])
    assert all(b >= a for a, b in itertools.pairwise(glide)) and glide[-1] > 2 * glide[0]
    # and no two are the same sound scaled: their waveforms do not match
    for a, b in itertools.combinations(EARCONS, 2):
        xa, xb = pcm(a), pcm(b)
        n = min(len(xa), len(xb))
        assert abs(np.corrcoef(xa[:n], xb[:n])[0, 1]) < 0.5, (a, b)


@pytest.mark.parametrize("name", EARCONS)
def test_gain_scales_the_level(name: str) -> None:
    full, half, off = pcm(name, 1.0), pcm(name, 0.5), pcm(name, 0.0)
    assert len(full) == len(half) == len(off)
    assert np.abs(half - full / 2).max() <= 1  # rounding
    assert not off.any()


@pytest.mark.parametrize(("name", "gain", "message"), [
    ("beep", 1.0, "unknown earcon 'beep' (one of listening_started, listening_stopped"),
    ("error", 1.5, "earcon gain must be 0..1, not 1.5"),
    ("error", -0.1, "earcon gain must be 0..1, not -0.1"),
])
def test_bad_requests_are_clear_errors(name: str, gain: float, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        render(name, gain)
