"""PCM conversion without numpy: libsoxr through ctypes, and byte-level channel work.

numpy and python-soxr serve here only as independent references.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr

from voiced.audio import libsoxr
from voiced.audio.convert import (
    QUALITY,
    FromWire,
    ToWire,
    downmix,
    duplicate,
    pick_channel,
    to_int16,
)
from voiced.audio.libsoxr import Resampler
from voiced.audio.volume import Volume
from voiced.errors import AudioDeviceError

RNG = np.random.default_rng(7)


def chirp(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    noise = RNG.normal(0, 500, len(t))
    return np.clip(0.6 * 32767 * np.sin(2 * np.pi * (200 + 400 * t) * t) + noise,
                   -32768, 32767).astype("<i2")


def in_chunks(r: Resampler, pcm: bytes, sizes: list[int]) -> bytes:
    out, i, k = [], 0, 0
    while i < len(pcm):
        n = sizes[k % len(sizes)] * 2
        k += 1
        out.append(r.process(pcm[i:i + n], last=i + n >= len(pcm)))
        i += n
    return b"".join(out)


@pytest.mark.parametrize("rates", [(48000, 24000), (44100, 24000), (24000, 48000),
                                   (24000, 16000), (16000, 24000)])
def test_resampler_chunked_equals_one_shot_and_matches_python_soxr(
        rates: tuple[int, int]) -> None:
    src, dst = rates
    sig = chirp(src, 2.0)
    one = Resampler(src, dst).process(sig.tobytes(), last=True)
    # uneven chunks, down to a single sample: no seams, nothing lost or repeated
    chunked = in_chunks(Resampler(src, dst), sig.tobytes(), [1, 7, 480, 3, 960, 2205])
    assert chunked == one
    assert len(one) // 2 == round(len(sig) * dst / src)
    # an independent build of the same library (python-soxr, which bundles its own)
    ref = soxr.resample(sig, src, dst, quality=QUALITY).astype(np.int64)
    got = np.frombuffer(one, "<i2").astype(np.int64)
    assert len(got) == len(ref)
    assert np.max(np.abs(got - ref)) <= 1


def test_resampler_clear_forgets_the_held_back_tail() -> None:
    sig = chirp(48000, 0.5).tobytes()
    r = Resampler(48000, 24000)
    r.process(sig)  # leaves filter history and held-back samples
    r.clear()
    fresh = Resampler(48000, 24000)
    assert r.process(sig, last=True) == fresh.process(sig, last=True)


def test_audio_after_the_last_chunk_is_refused_until_cleared() -> None:
    r = Resampler(48000, 24000)
    r.process(bytes(9600), last=True)
    assert r.process(b"", last=True) == b""  # flushing again is harmless
    with pytest.raises(ValueError, match="clear"):  # libsoxr itself would crash
        r.process(bytes(9600))
    r.clear()
    assert len(r.process(bytes(9600), last=True)) == 4800


def test_stereo_resampling_keeps_channels_apart() -> None:
    left, right = chirp(48000, 0.5), np.zeros(24000, "<i2")
    both = np.stack([left, right], 1).tobytes()
    out = np.frombuffer(Resampler(48000, 24000, 2).process(both, last=True),
                        "<i2").reshape(-1, 2)
    assert not out[:, 1].any()
    mono = np.frombuffer(Resampler(48000, 24000).process(left.tobytes(), last=True), "<i2")
    assert np.array_equal(out[:, 0], mono)


def test_gain_at_equal_rates_rounds_to_nearest_and_clips() -> None:
    sig = chirp(24000, 0.5)
    sig[:4] = [32767, -32768, 1, -1]
    for gain in (0.0, 0.25, 0.7, 1.9):
        got = np.frombuffer(Resampler(24000, 24000, gain=gain).process(sig.tobytes(),
                                                                        last=True), "<i2")
        exact = np.clip(sig.astype(np.float64) * gain, -32768, 32767)
        assert len(got) == len(sig)
        # nearest, up to libsoxr's single precision where a product is close to a tie
        assert np.max(np.abs(got - exact)) <= 0.5 + 1e-3, gain


def test_volume_scales_each_chunk_completely_and_100_percent_is_untouched(
        tmp_path: Path) -> None:
    sig = chirp(24000, 0.2).tobytes()
    v = Volume(tmp_path / "volume")
    assert v.apply(sig) is sig
    v.set(50)
    halves = [v.apply(sig[:4000]), v.apply(sig[4000:])]
    assert [len(h) for h in halves] == [4000, len(sig) - 4000]  # nothing held back
    want = np.frombuffer(sig, "<i2") * 0.25  # 50 % is a quarter of the amplitude
    assert np.max(np.abs(np.frombuffer(b"".join(halves), "<i2") - want)) <= 0.5
    assert Volume(tmp_path / "volume").apply(sig) == b"".join(halves)  # persisted
    v.set(0)
    assert not any(v.apply(sig))


def test_without_libsoxr_the_volume_says_so_and_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "volume").write_text("50\n")

    def missing() -> None:
        raise AudioDeviceError("libsoxr is not installed (sudo apt install libsoxr0)")

    monkeypatch.setattr(libsoxr, "_lib", missing)
    v = Volume(tmp_path / "volume")  # the daemon still starts
    assert v.percent == 100 and "cannot be applied" in caplog.text
    with pytest.raises(AudioDeviceError):
        v.set(30)
    assert v.percent == 100 and v.apply(b"\x10\x00") == b"\x10\x00"
    assert (tmp_path / "volume").read_text() == "50\n"  # the user's choice is kept


def test_downmix_averages_every_lane_without_overflow() -> None:
    for channels in (2, 3):
        a = RNG.integers(-32768, 32768, size=(5000, channels)).astype("<i2")
        a[0], a[1], a[2] = -32768, 32767, [-32768, 32767, 0][:channels]
        a[3], a[4], a[5] = [1, 0, 0][:channels], [-1, 0, 0][:channels], [3, 0, 0][:channels]
        got = np.frombuffer(downmix(a.tobytes() + b"\x01", channels), "<i2")
        want = np.rint(a.astype(np.int64).sum(1) / channels)  # half to even
        assert np.array_equal(got, want), channels
    # halves: 0.5 -> 0, -0.5 -> 0, 1.5 -> 2, -1.5 -> -2, 32766.5 -> 32766, -32767.5 -> -32768
    halves = np.array([[0, 1], [0, -1], [1, 2], [-1, -2], [32766, 32767], [-32767, -32768]],
                      "<i2")
    assert np.frombuffer(downmix(halves.tobytes(), 2), "<i2").tolist() == [
        0, 0, 2, -2, 32766, -32768]
    # no DC offset: the mean error over many random pairs is ~0, not -0.25 LSB
    pairs = RNG.integers(-32768, 32768, size=(200_000, 2)).astype("<i2")
    err = np.frombuffer(downmix(pairs.tobytes(), 2), "<i2") - pairs.astype(np.float64).mean(1)
    assert abs(err.mean()) < 0.01


def test_pick_and_duplicate_channels() -> None:
    a = RNG.integers(-32768, 32768, size=(1000, 4)).astype("<i2")
    assert pick_channel(a.tobytes(), 4, 2) == np.ascontiguousarray(a[:, 2]).tobytes()
    mono = a[:, 0].copy()
    assert duplicate(mono.tobytes(), 2) == np.repeat(mono, 2).tobytes()
    to_wire = ToWire(48000, 4, channel=3)
    assert to_wire.convert(a.tobytes(), last=True) == Resampler(48000, 24000).process(
        np.ascontiguousarray(a[:, 3]).tobytes(), last=True)
    from_wire = FromWire(24000, 2)
    assert from_wire.convert(mono.tobytes()) == np.repeat(mono, 2).tobytes()


@pytest.mark.parametrize("width", [1, 3, 4])
def test_to_int16_keeps_the_high_bits(width: int) -> None:
    if width == 1:
        raw = RNG.integers(0, 256, 999).astype(np.uint8)
        want = ((raw.astype(np.int16) - 128) << 8).astype("<i2")
        data = raw.tobytes()
    else:
        wide = RNG.integers(-2 ** (8 * width - 1), 2 ** (8 * width - 1), 999)
        data = b"".join(int(x).to_bytes(width, "little", signed=True) for x in wide)
        want = (wide >> (8 * width - 16)).astype("<i2")
    assert to_int16(data, width) == want.tobytes()
    with pytest.raises(ValueError, match="sample width 5"):
        to_int16(data, 5)


def test_a_missing_libsoxr_is_named_with_the_package_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str, *args: object, **kwargs: object) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    libsoxr._lib.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    try:
        with pytest.raises(AudioDeviceError, match="apt install libsoxr0"):
            ToWire(48000)
        assert ToWire(24000).convert(b"\x01\x02") == b"\x01\x02"  # no resampling needed
    finally:
        monkeypatch.undo()
        libsoxr._lib.cache_clear()
    assert libsoxr.version().startswith("libsoxr-")


def test_no_module_of_voiced_loads_numpy() -> None:
    # numpy is a test dependency only: it would cost the daemon 15 MB of RSS and most of
    # its start-up time, and a device install would fail on any module importing it
    code = ("import importlib, pkgutil, sys, voiced\n"
            "for m in pkgutil.walk_packages(voiced.__path__, 'voiced.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(len([m for m in sys.modules if m.startswith('voiced.')]), "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'soxr')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=True)
    count, loaded = p.stdout.strip().split(" ", 1)
    assert int(count) > 30 and loaded == "[]", p.stdout
