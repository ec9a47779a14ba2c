"""Opus (voiced/audio/opus.py, libopus via ctypes): round trips of speech, the codec
delay, frame sizes, loss concealment and FEC, clear errors, and hostile packets (the
relay decodes what devices send)."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from tests.room import REPLY_TEXT, correlation, espeak
from tests.speech import question_24k
from tests.test_aec import without_native_libraries
from voiced.audio import opus as opus_mod
from voiced.audio.native import MissingLibraryError
from voiced.audio.opus import MAX_DECODED, OpusDecoder, OpusEncoder, OpusError
from voiced.wire import SAMPLE_RATE

pytestmark = pytest.mark.skipif(not opus_mod.available(),
                                reason="libopus0 is not installed (scripts/setup.sh)")


def round_trip(x: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, int, OpusEncoder]:
    """``x`` through an encoder and a decoder that trims its delay: (decoded, bytes)."""
    enc = OpusEncoder(**kwargs)
    dec = OpusDecoder(trim=enc.lookahead)
    pcm = x.astype("<i2").tobytes()
    whole = len(pcm) // enc.frame_bytes * enc.frame_bytes
    packets = [enc.encode(pcm[i:i + enc.frame_bytes])
               for i in range(0, whole, enc.frame_bytes)]
    packets += enc.finish(pcm[whole:])
    out = b"".join(dec.decode(p) for p in packets)
    return np.frombuffer(out, "<i2"), sum(map(len, packets)), enc


def snr_db(x: np.ndarray, y: np.ndarray) -> float:
    e = x.astype(np.float64) - y.astype(np.float64)
    return float(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum(e ** 2)))


@pytest.mark.parametrize("bitrate", [16_000, 24_000, 32_000])
def test_speech_round_trip_lines_up_after_the_codec_delay(bitrate: int) -> None:
    x = espeak(REPLY_TEXT)
    y, nbytes, enc = round_trip(x, bitrate=bitrate)
    assert len(y) >= len(x)  # finish() pushed every real sample out
    y = y[:len(x)]
    # the waveform lines up within a sample or two of the reported delay: libopus's
    # internal resampling has a fraction of a sample more or less than it reports
    n = len(x)
    lags = {lag: correlation(x[8:n - 8], y[8 + lag:n - 8 + lag]) for lag in range(-4, 5)}
    best = max(lags, key=lags.__getitem__)
    aligned = y[8 + best:n - 8 + best]
    print(f"\n{bitrate} bit/s: lookahead {enc.lookahead} samples "
          f"({enc.lookahead / 24:.1f} ms), best alignment {best:+d}, correlation "
          f"{lags[best]:.3f} (at 0: {lags[0]:.3f}), SNR {snr_db(x[8:n - 8], aligned):.1f}"
          f" dB, {nbytes / (len(x) / SAMPLE_RATE):.0f} bytes/s")
    assert enc.lookahead == 156  # 2.5 ms + 4 ms at 24 kHz (libopus 1.3's VOIP mode)
    assert -2 <= best <= 0
    assert lags[best] >= 0.93 and lags[0] >= 0.85
    assert snr_db(x[8:n - 8], aligned) >= 8.0
    assert nbytes / (len(x) / SAMPLE_RATE) <= bitrate / 8 * 1.1  # about the bitrate


def test_pocketsphinx_hears_the_same_words_after_a_round_trip() -> None:
    if importlib.util.find_spec("pocketsphinx") is None:
        pytest.skip("pocketsphinx is not installed (voiced[sim])")
    from voiced.sim.voice import transcribe

    x = question_24k()
    before, real = transcribe(x.tobytes())
    assert real and before == "what is the weather like today"
    for bitrate in (12_000, 24_000):
        y, _, _ = round_trip(x, bitrate=bitrate)
        assert transcribe(y[:len(x)].tobytes()) == (before, True), bitrate


@pytest.mark.parametrize("frame_ms", [10, 20, 40, 60])
def test_frame_sizes(frame_ms: int) -> None:
    enc = OpusEncoder(frame_ms=frame_ms)
    dec = OpusDecoder()
    assert enc.frame == 24 * frame_ms and enc.frame_bytes == 48 * frame_ms
    x = espeak(REPLY_TEXT)[:SAMPLE_RATE]
    for i in range(0, len(x) - enc.frame + 1, enc.frame):
        packet = enc.encode(x[i:i + enc.frame].tobytes())
        assert 0 < len(packet) <= opus_mod.MAX_PACKET
        assert len(dec.decode(packet)) == enc.frame_bytes  # a packet is its frame
    with pytest.raises(OpusError, match=f"an Opus frame is {enc.frame_bytes} bytes of "
                                        f"PCM16 \\({enc.frame} samples\\), not 2"):
        enc.encode(b"\x00\x00")


def test_finish_pads_a_partial_frame_and_flushes_the_delay() -> None:
    x = espeak(REPLY_TEXT)[:SAMPLE_RATE + 100]  # a second and 100 samples
    y, _, enc = round_trip(x)
    assert enc.samples_in == len(x)
    assert len(y) >= len(x) and correlation(x[-400:-100], y[len(x) - 401:len(x) - 101]) > 0.8


def test_a_lost_packet_is_concealed_and_fec_rebuilds_it() -> None:
    x = espeak(REPLY_TEXT)[:SAMPLE_RATE * 4]
    frames = [x[i:i + 480].tobytes() for i in range(0, len(x) - 479, 480)]
    lost = 100  # a frame in the middle of speech
    for fec in (False, True):
        enc = OpusEncoder(fec=fec, loss_percent=10 if fec else 0)
        packets = [enc.encode(f) for f in frames]
        dec = OpusDecoder()
        out = []
        for i, p in enumerate(packets):
            if i == lost:
                out.append(dec.recover(packets[i + 1]) if fec else dec.conceal())
            else:
                out.append(dec.decode(p))
        assert all(len(o) == 960 for o in out)
        y = np.frombuffer(b"".join(out), "<i2")
        d = enc.lookahead
        got = y[lost * 480:(lost + 1) * 480]
        want = x[lost * 480 - d:(lost + 1) * 480 - d]
        score = correlation(got, want)
        print(f"\nlost frame {'rebuilt from FEC' if fec else 'concealed'}: correlation "
              f"with the original {score:.2f}, level {np.abs(got).max()} "
              f"(original {np.abs(want).max()})")
        assert np.abs(got).max() > 0  # not silence: speech goes on smoothly
        if fec:
            assert score > 0.8
    with pytest.raises(OpusError, match="can only conceal 2.5 ms multiples"):
        OpusDecoder().conceal(100)


@pytest.mark.parametrize(("packet", "message"), [
    (b"", "empty Opus packet"),
    (b"\x00" * 1501, "Opus packet of 1501 bytes"),
    (bytes([0x03, 0xFF]), "malformed Opus packet"),  # code 3: 63 frames, no data
    (bytes([0x03, 0x30]), "malformed Opus packet"),  # 48 x 20 ms: over 120 ms
    (bytes([0x01, 0x10, 0x20, 0x30]), "malformed Opus packet"),  # 2 equal frames, 3 bytes
    (bytes([0x02, 0xFC, 0xFF, 0x00]), "malformed Opus packet"),  # length past the end
])
def test_malformed_packets_are_clear_errors(packet: bytes, message: str) -> None:
    dec = OpusDecoder()
    with pytest.raises(OpusError, match=message):
        dec.decode(packet)
    # and the decoder still works afterwards
    assert len(dec.decode(OpusEncoder().encode(bytes(960)))) == 960


def test_random_and_mutated_packets_never_crash_the_decoder() -> None:
    """What a relay may receive: noise, truncations, flipped bits of real packets. Each
    is either decoded to a sane length of audio or refused with OpusError."""
    rng = np.random.default_rng(11)
    enc = OpusEncoder()
    x = espeak(REPLY_TEXT)[:SAMPLE_RATE]
    real = [enc.encode(x[i:i + 480].tobytes()) for i in range(0, len(x) - 479, 480)]
    dec = OpusDecoder()
    outcomes = {"decoded": 0, "refused": 0}
    for k in range(3000):
        if k % 3 == 0:
            packet = rng.integers(0, 256, rng.integers(1, 200)).astype(np.uint8).tobytes()
        elif k % 3 == 1:
            p = real[k % len(real)]
            packet = p[:rng.integers(1, len(p) + 1)]
        else:
            p = bytearray(real[k % len(real)])
            for _ in range(3):
                p[rng.integers(0, len(p))] ^= 1 << int(rng.integers(0, 8))
            packet = bytes(p)
        try:
            out = dec.decode(packet)
        except OpusError:
            outcomes["refused"] += 1
        else:
            assert len(out) % 2 == 0 and len(out) // 2 <= MAX_DECODED
            outcomes["decoded"] += 1
    print(f"\n3000 hostile packets: {outcomes}")
    assert outcomes["refused"] > 100 and outcomes["decoded"] > 100


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"frame_ms": 30}, "Opus frame_ms must be one of"),
    ({"bitrate": 500}, "Opus bitrate must be 6000..128000"),
    ({"complexity": 11}, "Opus complexity must be 0..10"),
])
def test_bad_settings_are_clear_errors(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(OpusError, match=message):
        OpusEncoder(**kwargs)


def test_reset_starts_a_new_stream_and_trims_again() -> None:
    x = espeak(REPLY_TEXT)[:SAMPLE_RATE]
    enc = OpusEncoder()
    dec = OpusDecoder(trim=enc.lookahead)
    first = b"".join(dec.decode(enc.encode(x[i:i + 480].tobytes())) for i in range(0, 4800, 480))
    enc.reset()
    dec.reset()
    again = b"".join(dec.decode(enc.encode(x[i:i + 480].tobytes())) for i in range(0, 4800, 480))
    assert first == again and len(first) == (4800 - enc.lookahead) * 2


def test_missing_library_is_named_only_when_used() -> None:
    with without_native_libraries(opus_mod):
        assert not opus_mod.available()
        with pytest.raises(MissingLibraryError, match=r"libopus.so.0 is not installed \(sudo "
                                                      r"apt install libopus0\)"):
            OpusDecoder()
