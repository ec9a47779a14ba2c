"""The bulk echo delay estimator (voiced/audio/delay.py): known delays, noise, no echo."""

from __future__ import annotations

import numpy as np
import pytest

from voiced.audio.delay import BIN, DelayEstimator, envelope
from voiced.wire import SAMPLE_RATE

BLOCK = 480  # the canceller's 20 ms block


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Noise bursts of syllable length with pauses: an envelope that moves like speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    env = np.repeat(rng.random(n // 2400 + 1) > 0.35, 2400)[:n].astype(float)
    return rng.normal(0, 4000, n) * env


def run(far: np.ndarray, mic: np.ndarray, est: DelayEstimator) -> int | None:
    """Feed both in 20 ms blocks (the speaker ahead of the mic, as on a device)."""
    for i in range(0, len(mic) - BLOCK + 1, BLOCK):
        est.far(far[i:i + BLOCK].astype("<i2").tobytes(), i)
        est.near(mic[i:i + BLOCK].astype("<i2").tobytes(), i)
    return est.estimate()


@pytest.mark.parametrize("delay_ms", [0, 40, 230, 520, 780])
def test_a_known_delay_is_found_to_10_ms(delay_ms: int) -> None:
    far = speechlike(3.0, 1)
    d = delay_ms * SAMPLE_RATE // 1000
    mic = np.concatenate([np.zeros(d), 0.5 * far])[:len(far)]
    got = run(far, mic, DelayEstimator())
    assert got is not None and abs(got - d) <= BIN


def test_a_delay_is_found_under_noise_and_a_room_tail() -> None:
    far = speechlike(3.0, 2)
    d = SAMPLE_RATE * 550 // 1000
    echo = np.convolve(far, np.exp(-np.arange(2400) / 600) * 0.05)[:len(far)]
    rng = np.random.default_rng(3)
    mic = np.concatenate([np.zeros(d), echo])[:len(far)] + rng.normal(0, 300, len(far))
    got = run(far, mic, DelayEstimator())
    assert got is not None and abs(got - d) <= 3 * BIN  # the tail smears the envelope


def test_no_echo_no_estimate() -> None:
    far = speechlike(3.0, 4)
    mic = np.random.default_rng(5).normal(0, 300, len(far))  # a headset: noise only
    est = DelayEstimator()
    assert run(far, mic, est) is None and est.score < 0.5
    other = speechlike(3.0, 6)  # someone talking, unrelated to the speaker
    assert run(far, other, DelayEstimator()) is None


def test_no_estimate_without_speaker_sound() -> None:
    mic = speechlike(3.0, 7)
    assert run(np.zeros(len(mic)), mic, DelayEstimator()) is None


def test_a_jump_in_the_speaker_positions_starts_a_new_bin() -> None:
    est = DelayEstimator()
    est.far(np.full(300, 1000, "<i2").tobytes(), 0)
    est.far(np.full(BIN, 1000, "<i2").tobytes(), 10_000)  # a gap: its bin starts afresh
    assert est._far_at(0) == pytest.approx(1000) and est._far_at(1) == 0.0
    assert envelope(np.array([-4, 1, 1, 1, 4], "<i2").tobytes()) == 4.0
