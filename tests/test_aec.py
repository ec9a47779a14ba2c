"""The echo canceller (voiced/audio/aec.py, speexdsp) in a synthetic room, offline and
deterministic: the reply spoken by espeak-ng, convolved with a room-like impulse response
at 20-80 ms and a gain, a mic noise floor, and the user talking over it. The simulator's
own VAD (a real ``voiced sim`` over websockets) judges what would reach the server.

Figures are printed (``pytest -s``) as well as asserted; the README and
docs/architecture.md quote them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.room import (
    REPLY_TEXT,
    USER_TEXT,
    VAD_FRAME,
    cancel,
    correlation,
    echo_of,
    erle_db,
    espeak,
    impulse_response,
    loudest_10ms_dbfs,
    noise,
    to_pcm,
)
from tests.test_sim_faults import until
from voiced.audio import aec as aec_mod
from voiced.audio.aec import EchoCanceller, _FarRing
from voiced.audio.native import MissingLibraryError
from voiced.sim.server import SimOptions, SimServer
from voiced.wire import SAMPLE_RATE

pytestmark = pytest.mark.skipif(not aec_mod.available(),
                                reason="libspeexdsp1 is not installed (scripts/setup.sh)")

CONVERGED_S = 3.0  # ERLE is judged after this much reply audio
USER_AT_S = 10.0  # the user starts talking over the reply here


def canceller(**kwargs: Any) -> EchoCanceller:
    """An EchoCanceller whose per-block cost reads as nothing: a loaded machine must not
    make it bypass itself (the bypass has its own tests, with a clock they control)."""
    return EchoCanceller(clock=lambda: 0.0, **kwargs)


def room(delay_ms: float, gain: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(speaker signal, echo at the mic (float), the mic's self noise) for the reply."""
    far = espeak(REPLY_TEXT)
    echo = echo_of(far, impulse_response(delay_ms, gain))
    return far, echo, noise(len(far))


def user_track(n: int) -> tuple[np.ndarray, slice]:
    """The user's words at USER_AT_S in an ``n``-sample track (float), and where they are."""
    user = espeak(USER_TEXT, "en-gb+f3", 150).astype(np.float64) * 0.5
    start = int(USER_AT_S * SAMPLE_RATE)
    track = np.zeros(n)
    track[start:start + len(user)] = user[:n - start]
    return track, slice(start, min(n, start + len(user)))


@pytest.mark.parametrize("delay_ms", [20, 50, 80])
def test_erle_after_convergence_in_a_synthetic_room(delay_ms: int) -> None:
    far, echo, floor = room(delay_ms)
    mic = to_pcm(echo + floor)
    linear = cancel(canceller(suppress=False), mic, far)
    full_aec = canceller()
    full = cancel(full_aec, mic, far)
    a, n = int(CONVERGED_S * SAMPLE_RATE), len(full)
    erle_linear = erle_db(echo[a:n], linear[a:n])
    erle = erle_db(echo[a:n], full[a:n])
    print(f"\nroom delay {delay_ms} ms, gain 0.5: ERLE {erle:.1f} dB with the residual "
          f"suppressor, {erle_linear:.1f} dB linear filter alone; filter peak at "
          f"{full_aec.echo_delay_ms():.1f} ms; loudest 10 ms of the residual "
          f"{loudest_10ms_dbfs(full[a:n]):.1f} dBFS (echo {loudest_10ms_dbfs(echo[a:n]):.1f})")
    assert erle >= 25.0
    assert erle_linear >= 20.0  # the adaptive filter itself does most of the work
    # the filter found the room's delay (its strongest tap is the direct path)
    assert abs(full_aec.echo_delay_ms() - delay_ms) <= 2


def test_the_cancelled_echo_is_below_the_simulators_vad_threshold() -> None:
    far, echo, floor = room(50)
    out = cancel(canceller(), to_pcm(echo + floor), far)
    a = int(CONVERGED_S * SAMPLE_RATE)
    # threshold 0.5 is -40 dBFS per 10 ms frame (voiced/sim/server.py)
    assert loudest_10ms_dbfs(echo[a:]) > -40  # without the canceller it would fire
    assert loudest_10ms_dbfs(out[a:]) < -40


def test_user_speech_over_the_echo_survives() -> None:
    far, echo, floor = room(50)
    user, span = user_track(len(far))
    mic = to_pcm(echo + floor + user)
    aec = canceller()
    out = cancel(aec, mic, far)
    d = aec.delay
    cleaned = out[span.start + d:span.stop + d]
    before = correlation(mic[span], user[span])
    after = correlation(cleaned, user[span])
    print(f"\nuser over echo: correlation with the clean user {after:.3f} after the "
          f"canceller, {before:.3f} before")
    assert after >= 0.95
    assert after > before + 0.1


def test_the_suppressor_delays_by_one_block_and_the_linear_filter_by_none() -> None:
    user = espeak(USER_TEXT, "en-gb+f3", 150)
    silence = np.zeros(len(user), np.int16)
    for frame_ms in (10, 20):
        for suppress in (False, True):
            aec = canceller(frame_ms=frame_ms, suppress=suppress)
            out = cancel(aec, user, silence)
            n = len(out) - 2 * aec.frame
            lags = [correlation(out[lag:lag + n], user[:n]) for lag in range(0, 2 * aec.frame)]
            assert int(np.argmax(lags)) == aec.delay == (aec.frame if suppress else 0)


def test_multi_block_frames_equal_the_same_blocks_one_by_one() -> None:
    far, echo, floor = room(30)
    mic = to_pcm(echo + floor)[:SAMPLE_RATE * 3]
    far = far[:SAMPLE_RATE * 3]
    one = cancel(canceller(), mic, far)
    five = cancel(canceller(), mic, far, frame=canceller().frame * 5)  # 100 ms
    assert np.array_equal(one[:len(five)], five)


def test_position_jitter_does_not_move_the_reference() -> None:
    """Callbacks run late and early: the reported position lags what the speaker was
    given by 0-2 blocks at random. Consecutive mic blocks still get consecutive speaker
    samples, so the filter keeps its alignment."""
    far, echo, floor = room(40)
    mic = to_pcm(echo + floor)
    f = canceller().frame
    steady = cancel(canceller(), mic, far, ahead=2 * f)
    lag = np.random.default_rng(3).integers(0, 2 * f + 1, 97)
    aec = canceller()
    jittery = cancel(aec, mic, far, ahead=2 * f, lag=lag)
    a = int(CONVERGED_S * SAMPLE_RATE)
    assert aec.realigned == 0 and aec.paused == 0
    erle_steady = erle_db(echo[a:], steady[a:])
    erle_jittery = erle_db(echo[a:], jittery[a:len(echo)])
    print(f"\nreports lagging 0-40 ms at random: ERLE {erle_jittery:.1f} dB, "
          f"{erle_steady:.1f} dB without")
    assert erle_jittery >= erle_steady - 3


def test_a_jump_in_the_reported_position_realigns() -> None:
    """A speaker restarted without a reset: its positions jump; the reference follows."""
    far, echo, floor = room(40)
    mic = to_pcm(echo + floor)
    aec = canceller()
    f = aec.frame
    out = []
    offset = 0
    for i in range(0, len(mic) - f + 1, f):
        if i == 5 * SAMPLE_RATE:
            offset = 10 * SAMPLE_RATE  # everything after this is reported 10 s later
        aec.played(far[i:i + f].tobytes(), i + offset)
        out.append(np.frombuffer(aec.process(mic[i:i + f].tobytes(), i + f + offset), "<i2"))
    res = np.concatenate(out)
    assert aec.realigned == 1
    tail = slice(10 * SAMPLE_RATE, len(res))
    assert erle_db(echo[tail], res[tail]) >= 25


def test_the_reference_waits_out_a_stalled_speaker_and_follows_a_faster_one() -> None:
    """It starts a block behind the report; late reports do not move it; when it has
    caught up with what a stalled speaker was given, it reads silence and waits (the
    device plays silence then, an underrun) and resumes with the speaker; a lasting gap
    of more than three blocks (the speaker's clock is faster) moves it forward once the
    whole window agrees."""
    aec = canceller()
    f = aec.frame
    silence = bytes(aec.frame_bytes)
    handed = 0

    def block(given: int, report: int) -> None:
        nonlocal handed
        if given > handed:
            aec.played(bytes(2 * (given - handed)), handed)
            handed = given
        aec.process(silence, report)

    block(f, f)  # the first block: speaker at 1 block, reference from -1
    assert aec._ref_pos == 0
    for k in range(1, 40):
        block((k + 1) * f, (k + 1) * f - (k % 3 == 0) * (f // 2))  # some half a block late
    assert aec._ref_pos == 39 * f and aec.realigned == aec.paused == 0
    for _ in range(5):  # the speaker stalls for 5 blocks
        block(40 * f, 40 * f)
    assert aec._ref_pos == 40 * f and aec.paused == 4 * f  # the margin, then silence
    for k in range(40, 60):  # it resumes where it stopped; the mic is 5 blocks on
        block((k + 1) * f, (k + 1) * f)
    assert aec._ref_pos == 60 * f and aec.realigned == 0  # no margin left, in step
    moved_at: list[int] = []
    for k in range(60, 120):  # from now on 4 blocks more than expected
        block((k + 5) * f, (k + 5) * f)
        moved_at += [k] * (aec.realigned - len(moved_at))
    assert moved_at == [60 + 24]  # when the whole window has seen it
    assert aec._ref_pos == 124 * f - f and aec.paused == 4 * f


def test_far_ring_reads_silence_where_nothing_was_played() -> None:
    ring = _FarRing(100)
    ring.write(np.arange(1, 41, dtype="<i2").tobytes(), 0)
    got = np.frombuffer(ring.read(30, 20), "<i2")
    assert list(got[:10]) == list(range(31, 41)) and not got[10:].any()  # not played yet
    ring.write(np.full(10, 7, "<i2").tobytes(), 60)  # 40..59 never reported: silence
    got = np.frombuffer(ring.read(35, 30), "<i2")
    assert list(got[:5]) == list(range(36, 41)) and not got[5:25].any() and (got[25:] == 7).all()
    ring.write(np.full(150, 9, "<i2").tobytes(), 70)  # wraps, longer than the ring
    assert ring.end == 220
    assert not np.frombuffer(ring.read(60, 60), "<i2").any()  # older than the ring holds
    assert (np.frombuffer(ring.read(120, 100), "<i2") == 9).all()
    assert not np.frombuffer(ring.read(-50, 10), "<i2").any()


class SlowClock:
    """A clock each block appears to take ``cost_s`` on."""

    def __init__(self, cost_s: float) -> None:
        self.cost_s = cost_s
        self.now = 0.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:
            self.now += self.cost_s
        return self.now


def test_bypass_engages_when_blocks_cost_too_much_and_retries_later() -> None:
    events: list[tuple[bool, str]] = []
    clock = SlowClock(0.015)  # 15 ms for a 20 ms block, over the 10 ms budget
    aec = EchoCanceller(window=10, retry_s=1.0, clock=clock,
                        on_bypass=lambda on, why: events.append((on, why)))
    far, echo, floor = room(20)
    mic = to_pcm(echo + floor)[:SAMPLE_RATE * 2]
    f = aec.frame
    outs = []
    for k, i in enumerate(range(0, len(mic) - f + 1, f)):
        aec.played(far[i:i + f].tobytes(), i)
        outs.append((k, aec.process(mic[i:i + f].tobytes(), i + f), mic[i:i + f].tobytes()))
        if k == 9:
            assert aec.bypassed and events == [(True, events[0][1])]
            assert "15.00 ms per 20 ms block" in events[0][1]
        if k == 10:
            clock.cost_s = 0.001  # the load is gone
    assert all(out == raw for k, out, raw in outs[10:60])  # bypassed: the mic as it is
    assert aec.bypassed_frames == 50 and aec.frames == 10 + (len(outs) - 60)
    assert events[1] == (False, "echo cancellation resumed")
    assert not aec.bypassed and len(events) == 2  # cheap again: stays on


def test_a_cheap_canceller_never_bypasses() -> None:
    events: list[tuple[bool, str]] = []
    aec = EchoCanceller(window=5, clock=SlowClock(0.009),  # 9 ms of a 10 ms budget
                        on_bypass=lambda on, why: events.append((on, why)))
    for i in range(100):
        aec.process(bytes(aec.frame_bytes), i * aec.frame)
    assert events == [] and aec.frames == 100 and aec.mean_cost_s() == pytest.approx(0.009)


def test_reset_lifts_the_bypass_and_forgets_the_speaker() -> None:
    events: list[tuple[bool, str]] = []
    aec = EchoCanceller(window=2, clock=SlowClock(1.0),
                        on_bypass=lambda on, why: events.append((on, why)))
    loud = np.full(aec.frame, 8000, "<i2").tobytes()
    aec.played(loud, 0)
    aec.process(bytes(aec.frame_bytes), aec.frame)
    aec.process(bytes(aec.frame_bytes), 2 * aec.frame)
    assert aec.bypassed
    aec.reset()
    assert not aec.bypassed and events[-1] == (False, "echo cancellation reset")
    assert aec._far.end == 0 and aec._ref_pos is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"frame_ms": 30}, "frame_ms must be one of (10, 20)"),
    ({"tail_ms": 5}, "tail_ms must be 20..1000"),
    ({"latency_ms": -1}, "latency_ms must be 0..500"),
    ({"budget": 0}, "budget must be in (0, 1]"),
])
def test_bad_settings_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        EchoCanceller(**kwargs)


def test_frames_that_are_not_whole_blocks_are_refused() -> None:
    aec = canceller(frame_ms=10)
    for size in (0, 1, 479, 481):
        with pytest.raises(ValueError, match="whole number of 480-byte blocks"):
            aec.process(bytes(size), 0)
    with pytest.raises(ValueError, match="position must be >= 0"):
        aec.played(bytes(480), -1)
    assert len(aec.process(bytes(960), 480)) == 960  # two blocks


@contextlib.contextmanager
def without_native_libraries(module: Any) -> Iterator[None]:
    """No shared library loads (as on a device without the apt package); ``module``'s
    cached loader forgets what it had before and after."""
    def no_such_library(name: str, *args: Any, **kwargs: Any) -> Any:
        raise OSError(f"{name}: cannot open shared object file")

    module._lib.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ctypes, "CDLL", no_such_library)
        mp.setattr(ctypes.util, "find_library", lambda name: None)
        try:
            yield
        finally:
            module._lib.cache_clear()


def test_missing_library_is_named_only_when_used() -> None:
    with without_native_libraries(aec_mod):
        assert not aec_mod.available()
        with pytest.raises(MissingLibraryError,
                           match=r"libspeexdsp.so.1 is not installed \(sudo apt install "
                                 r"libspeexdsp1\); voiced needs it for echo cancellation"):
            EchoCanceller()


# --- the simulator's VAD judges what would reach the server --------------------------

async def sim_speech_starts(pcm: np.ndarray) -> list[int]:
    """Where a real ``voiced sim``'s server VAD (threshold 0.5, no prefix padding) hears
    speech start in ``pcm``, in ms."""
    async with SimServer(SimOptions(transcript="(words)")) as sim, connect(sim.url) as ws:
        await until(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 0,
                "silence_duration_ms": 500, "create_response": False}}}}}))
        await until(ws, "session.updated")
        data = pcm.astype("<i2").tobytes()
        for i in range(0, len(data), 9600):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(data[i:i + 9600]).decode()}))
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        events = await until(ws, "input_audio_buffer.cleared")  # after every VAD event
        return [int(e["audio_start_ms"]) for e in events
                if e["type"] == "input_audio_buffer.speech_started"]


def first_loud_ms(x: np.ndarray) -> float:
    """Where the simulator's VAD rule (10 ms RMS above -40 dBFS) first holds in ``x``."""
    level = 10 ** (-40 / 20) * 32768
    whole = len(x) // VAD_FRAME * VAD_FRAME
    rms = np.sqrt((x[:whole].astype(np.float64).reshape(-1, VAD_FRAME) ** 2).mean(axis=1))
    return float(np.argmax(rms > level) * 10)


async def test_sim_vad_ignores_the_cancelled_echo_and_hears_the_user_over_it() -> None:
    far, echo, floor = room(50)
    a = int(CONVERGED_S * SAMPLE_RATE)
    raw_echo = to_pcm(echo + floor)
    cancelled = cancel(canceller(), raw_echo, far)
    # the echo alone, after convergence: the raw echo starts a turn, the cancelled one not
    assert await sim_speech_starts(raw_echo[a:]) != []
    assert await sim_speech_starts(cancelled[a:]) == []
    # the user over the echo: heard within 300 ms of where the clean voice would be
    user, span = user_track(len(far))
    aec = canceller()
    out = cancel(aec, to_pcm(echo + floor + user), far)
    starts = await sim_speech_starts(out[a:])
    onset_ms = (span.start - a) / SAMPLE_RATE * 1000 + first_loud_ms(user[span])
    print(f"\nuser over echo: the simulator's VAD starts at {starts} ms; the clean voice "
          f"crosses its threshold at {onset_ms:.0f} ms")
    assert starts, "the VAD never heard the user"
    assert onset_ms - 10 <= starts[0] <= onset_ms + 300


class _Spy(EchoCanceller):
    """The real canceller, noting the speaker position each mic frame is paired with."""

    def __init__(self) -> None:
        super().__init__()
        self.paired: list[int] = []
        self.timed: list[bool] = []

    def process(self, mic: bytes, played: int, *, timed: bool = False) -> bytes:
        self.paired.append(played)
        self.timed.append(timed)
        return super().process(mic, played, timed=timed)


def test_mic_frames_pair_with_the_speaker_by_portaudio_timestamps() -> None:
    """The speaker position a mic frame is paired with is the one playing when the frame
    was captured (PortAudio's DAC and ADC times), not the count handed over when the mic
    callback happens to run: a late callback must not move it (measured on the pulse
    device: 160-280 ms of wander by count; docs/architecture.md)."""
    from types import SimpleNamespace

    from voiced.audio.pipeline import EchoFilter, SpeakerMix

    spy = _Spy()
    sink = SimpleNamespace(rate=24000, channels=1, dac_time=0.0)
    mix = SpeakerMix(sink, spy)
    source = SimpleNamespace(adc_time=0.0)
    filt = EchoFilter(spy, mix, source)

    def periods(first: int, count: int) -> None:
        for k in range(first, first + count):  # 20 ms periods, each playing 40 ms later
            sink.dac_time = 10.0 + k * 0.02 + 0.04
            mix(bytes(960))

    periods(0, 10)
    source.adc_time = 10.1  # captured at 10.1 s: the period handed at 10.06 s played then
    filt(bytes(960))
    assert spy.paired == [5 * 480 - 2 * 480] and filt.timed == 1
    assert filt.lead == 10 * 480 - spy.paired[0]
    periods(10, 5)  # the mic callback for the next frame runs 100 ms late
    source.adc_time = 10.12
    filt(bytes(960))
    assert spy.paired[1] == spy.paired[0] + 480  # one frame on, however late it ran
    source.adc_time = 0.0  # a host API without timestamps: the count handed over
    filt(bytes(960))
    assert spy.paired[2] == 15 * 480 and filt.timed == 2
    assert spy.timed == [True, True, False]


def test_the_mic_callback_times_each_frame_by_its_last_sample() -> None:
    from types import SimpleNamespace

    from voiced.audio.convert import Framer, frame_bytes
    from voiced.audio.pyaudio_backend import PyAudioSource

    times: list[float] = []
    src = SimpleNamespace(adc_time=0.0)
    src.frame_filter = lambda f: (times.append(src.adc_time), f)[1]
    framer = Framer(frame_bytes(40))
    frames = framer.push(bytes(2400 * 2))  # 100 ms read: two 40 ms frames, 20 ms held
    assert len(frames) == 2 and framer.pending_samples() == 480
    PyAudioSource._filter(src, frames, framer, 2400, 24000,  # type: ignore[arg-type]
                          {"input_buffer_adc_time": 5.0})
    assert times == pytest.approx([5.04, 5.08])
    PyAudioSource._filter(src, frames, framer, 2400, 24000,  # type: ignore[arg-type]
                          {"input_buffer_adc_time": 0.0})
    assert times[2:] == [0.0, 0.0]  # no timestamp: the filter falls back to the count


class _Device:
    """Speaker and mic on one virtual clock, as PortAudio drives them (injected time).

    Step ``j`` is 20 ms: the speaker (while its stream runs) is asked for the period that
    plays ``ahead`` periods from now, with that period's DAC time; then the mic frame
    captured over the step is handed over with its ADC time. The room: the mic hears
    what the speaker played ``ROOM`` samples ago at half its level.
    """

    ROOM = SAMPLE_RATE * 40 // 1000
    P = SAMPLE_RATE // 50  # 20 ms periods and frames

    def __init__(self, aec: EchoCanceller, ahead: int = 3) -> None:
        from types import SimpleNamespace

        from voiced.audio.pipeline import EchoFilter, SpeakerMix

        self.aec = aec
        self.ahead = ahead
        self.sink = SimpleNamespace(rate=SAMPLE_RATE, channels=1, dac_time=0.0)
        self.source = SimpleNamespace(adc_time=0.0)
        self.mix = SpeakerMix(self.sink, aec)
        self.filter = EchoFilter(aec, self.mix, self.source)
        # what the speaker played, by time (20 ms slots): silence where it was stopped;
        # the room's delay as silence before it
        self.sound = np.zeros(self.ROOM + 3600 * self.P)
        self.step = 0
        self.handed = 0  # slots the speaker was asked for
        self.echo: list[np.ndarray] = []
        self.out: list[np.ndarray] = []
        self.rng = np.random.default_rng(5)

    def run(self, steps: int, audio: np.ndarray | None = None, *, running: bool = True,
            jitter_s: float = 0.0) -> None:
        """``steps`` steps; the speaker (when ``running``) plays ``audio`` then silence."""
        queue = audio.astype("<i2") if audio is not None else np.zeros(0, "<i2")
        t0 = 100.0  # PortAudio's stream clock is not zero-based
        for _ in range(steps):
            if running:
                # a stream (re)started asks for every period up to ``ahead`` at once
                self.handed = max(self.handed, self.step)
                while self.handed <= self.step + self.ahead:
                    period = np.zeros(self.P, "<i2")
                    part = queue[:self.P]
                    period[:len(part)] = part
                    queue = queue[self.P:]
                    self.sink.dac_time = (t0 + self.handed * self.P / SAMPLE_RATE
                                          + self.rng.uniform(0, jitter_s))
                    self.mix(period.tobytes())
                    at = self.ROOM + self.handed * self.P
                    self.sound[at:at + self.P] = period
                    self.handed += 1
            echo = self.sound[self.step * self.P:(self.step + 1) * self.P] * 0.5
            self.echo.append(echo)
            self.source.adc_time = t0 + (self.step + 1) * self.P / SAMPLE_RATE
            self.out.append(np.frombuffer(self.filter(to_pcm(echo).tobytes()), "<i2"))
            self.step += 1


def test_the_timeline_runs_on_through_a_stopped_speaker() -> None:
    """A speaker stream stopped while idle and started again (issue 21): its next period
    plays later than the positions handed so far say. The position jumps by the time it
    played nothing, so the timed position the mic reads through the pause and after
    the restart is one timeline; a DAC time a few ms late (jitter) moves nothing.
    Before, the count resumed where it stopped: the mic's timed position ran 3 s ahead
    during the pause and fell back by 3 s at the restart."""
    from types import SimpleNamespace

    from voiced.audio.pipeline import SpeakerMix

    sink = SimpleNamespace(rate=24000, channels=1, dac_time=0.0)
    mix = SpeakerMix(sink, canceller())
    assert mix.position_at(5.0) is None  # no timed period yet
    for k in range(10):
        sink.dac_time = 10.0 + k * 0.02 + (0.004 if k == 5 else 0.0)  # one 4 ms late
        mix(bytes(960))
    assert mix.position == 10 * 480 and mix.gaps == 0
    assert mix.position_at(9.9) == -2400  # before the first sample played: negative
    during = mix.position_at(12.0)  # stopped after 10.2 s; the mic reads on
    sink.dac_time = 13.0  # started again: its first period plays at 13 s
    mix(bytes(960))
    assert mix.gaps == 1 and mix.position == 3 * 24000 + 480
    assert mix.position_at(12.0) == during == 2 * 24000
    assert mix.position_at(13.01) == 3 * 24000 + 240
    mix.clear()  # a device reopened: a new stream, whose clock is its own
    sink.dac_time = 50.0
    mix(bytes(960))
    assert mix.gaps == 1 and mix.position_at(50.0) == 3 * 24000 + 480


def test_a_speaker_pause_is_silence_in_the_reference_not_a_move() -> None:
    """Reply 1, the speaker idles (its stream stopped 2 s after the reply, for 3 s),
    reply 2: the reference runs on through the pause in step with the mic, so it never
    moves, and the echo of reply 2 is cancelled from its first block. Before the fix it
    waited at the speaker's last sample while the timed position ran on, moved 5 times
    in the pause, and jumped back when the speaker restarted."""
    from tests.room import loudest_10ms_dbfs

    far = espeak(REPLY_TEXT)[:6 * SAMPLE_RATE]
    aec = canceller()
    dev = _Device(aec)
    dev.run(6 * 50 + 100, far)  # reply 1 and 2 s of the callback's silence
    assert aec.realigned == 0 and aec.converged
    dev.run(150, running=False)  # the stream stopped for 3 s; the mic runs on
    dev.run(100, far[:2 * SAMPLE_RATE])  # started again, reply 2
    assert dev.mix.gaps == 1
    assert aec.realigned == 0, "the reference moved across the pause"
    echo = np.concatenate(dev.echo[-100:])
    out = np.concatenate(dev.out[-100:])
    start = int(np.argmax(np.abs(echo) > 100))
    assert loudest_10ms_dbfs(echo[start:start + 4800]) > -30  # the echo is there
    # the suppressor's block of delay; the simulator's VAD fires at -40 dBFS
    assert loudest_10ms_dbfs(out[start + 480:start + 480 + 4800]) < -40


def test_a_reference_ahead_of_the_timed_position_moves_back() -> None:
    """A reference that runs ahead of what plays (the speaker handed periods before
    they play, and the timed position said so late) pairs the mic with sound not played
    yet: no filter can use it. Once a whole window of reports agrees, it moves back to
    a block behind, and the convergence gate re-arms (the filter's echo path moved).
    Before, only a reference behind was moved."""
    aec = canceller()
    f = aec.frame
    silence = bytes(aec.frame_bytes)
    aec.played(bytes(2 * 200 * f), 0)
    aec.process(silence, 10 * f, timed=True)  # the reference from 9 blocks on
    aec.converged = True
    moved_at: list[int] = []
    for k in range(40):
        aec.process(silence, 5 * f + k * f, timed=True)  # the reports: 5 blocks less
        moved_at += [k] * (aec.realigned - len(moved_at))
    assert moved_at == [24] and not aec.converged
    assert aec._ref_pos == 5 * f + 40 * f - 2 * f  # a block behind the next report


def test_the_reference_follows_a_switch_between_count_and_time_at_once() -> None:
    aec = canceller()
    f = aec.frame
    silence = bytes(aec.frame_bytes)
    aec.process(silence, 100 * f)  # by count: the speaker was handed 100 blocks
    aec.process(silence, 96 * f, timed=True)  # by time: 96 blocks have played
    assert aec.realigned == 1 and aec._ref_pos == 96 * f - f


def test_the_gate_opens_only_once_the_echo_loss_has_held_for_half_a_second() -> None:
    """The smoothed echo loss of a filter still learning crosses 30 dB before its
    peaks are below a VAD's threshold (through `voiced run` the gate opened at 31 dB and
    the echo started a turn a second later): it must hold over 0.5 s of speaker sound
    (after a pause, 0.2 s: the same filter only shows it still fits). Before, the
    first block over 30 dB opened it; then 1 s (halved with the replay after a move:
    test_a_move_of_the_bulk_delay_replays_and_a_short_hold_keeps_the_echo_out)."""
    aec = canceller()
    n = aec.frame
    loud = (np.full(n, 3000, "<i2")).tobytes()
    quiet = (np.full(n, 30, "<i2")).tobytes()  # 40 dB below: the echo cancelled
    second = SAMPLE_RATE // n // 2  # the hold: half a second of blocks
    for _ in range(second - 1):
        aec._track_erle(loud, loud, quiet)
    assert aec.erle_db() >= 30 and not aec.converged
    aec._track_erle(loud, loud, loud)  # one block the filter missed: start again
    assert aec.erle_db() < 30
    good = []  # blocks since, whether each was over 30 dB
    while not aec.converged and len(good) < 3 * second:
        aec._track_erle(loud, loud, quiet)
        good.append(aec.erle_db() >= 30)
    assert aec.converged and good[-second:] == [True] * second and not good[-second - 1]
    aec._rearm(0.2)  # the speaker after a pause
    for _ in range(second * 2 // 5 - 1):
        aec._track_erle(loud, loud, quiet)
    assert not aec.converged
    aec._track_erle(loud, loud, quiet)
    assert aec.converged


def test_an_underrun_in_a_reply_re_arms_the_gate() -> None:
    """The speaker's callback stalls for 100 ms in the middle of a reply and the device
    plays 40 ms of nothing beyond what it had been handed (an underrun): its
    positions jump by the DAC times, but across an underrun PulseAudio's ALSA plugin put
    the echo 30 ms from where they said (through `voiced run`, where reply 1's echo then
    passed the open gate). So the gate re-arms at once and opens again only once the
    echo loss has held for a second. Before, it stayed open."""
    far = espeak(REPLY_TEXT)[:8 * SAMPLE_RATE]
    aec = canceller()
    dev = _Device(aec)
    dev.run(200, far[:4 * SAMPLE_RATE - 3 * _Device.P])  # 4 s of the reply
    assert aec.converged and dev.mix.gaps == 0
    dev.run(5, running=False)  # 100 ms without a callback
    dev.run(1, far[4 * SAMPLE_RATE:4 * SAMPLE_RATE + _Device.P])
    assert dev.mix.gaps == 1 and not aec.converged
    dev.run(150, far[4 * SAMPLE_RATE + _Device.P:])
    assert aec.converged


async def test_the_gate_judges_each_block_when_it_is_cleaned_not_when_the_loop_reads_it(
) -> None:
    """Mic frames cross from PortAudio's thread to the event loop in batches (one
    callback's worth, 100 ms by default) and wait there for the loop's turn: on a busy
    machine the loop reads a frame some frames after the canceller cleaned it. The
    convergence gate must judge each block by the filter's state when that block was
    cleaned. Before, `HandsFree.mic_frame` read the state on the loop: frames the filter
    cleaned before it had shown it fits were passed if it converged meanwhile (the echo
    of a reply through the gate), and frames cleaned after were silenced if it had
    re-armed meanwhile."""
    from types import SimpleNamespace

    from tests.test_hands_free import hands

    h, _ = hands(audio={"echo": "aec"})
    sink = SimpleNamespace(rate=SAMPLE_RATE, channels=1, dac_time=0.0, output_filter=None)
    source = SimpleNamespace(adc_time=0.0, frame_filter=None)
    h.install(source, sink, asyncio.get_running_loop())
    aec = h.echo
    assert aec is not None and h.mix is not None
    aec._clock = lambda: 0.0  # no bypass on a loaded machine: its own tests cover it
    dev = _Device(aec)
    dev.sink, dev.source, dev.mix, dev.filter = sink, source, h.mix, source.frame_filter
    lag = 5  # frames the loop reads behind the mic's thread
    far = espeak(REPLY_TEXT)[:8 * SAMPLE_RATE]
    cleaned_open: list[bool] = []  # per frame: the gate open when it was cleaned
    handed: list[bytes] = []  # what the loop hands up, read ``lag`` frames late
    at = 0  # the reply's samples handed so far
    for k in range(8 * 50):
        before = dev.handed
        dev.run(1, far[at:])
        at += (dev.handed - before) * _Device.P
        cleaned_open.append(aec.converged or not aec.echo_possible)
        if k >= lag:
            handed.append(h.mic_frame(dev.out[k - lag].tobytes()))
    opened = cleaned_open.index(True, 50)
    assert aec.converged and opened < len(handed)
    # the frames cleaned just before it opened were read after it had: still silence
    late = handed[opened - lag:opened]
    assert all(not any(f) for f in late), "a frame cleaned before convergence passed"
    # and what the filter cleaned while the gate was open goes up as it was cleaned
    assert all(f == dev.out[j].tobytes() for j, f in enumerate(handed) if cleaned_open[j])
    assert h.status()["aec_gated_blocks"] == aec.gated > 0


def test_a_first_estimate_where_the_reference_stands_keeps_what_the_filter_learnt() -> None:
    """A short echo path (40 ms: its bulk, less the 50 ms margin, is 0): the first
    bulk estimate asks for no move, so the filter keeps what it has learnt since the
    reply began and the gate opens about 3 s sooner. Before, that estimate "moved" the
    reference by 0 ms and reset the filter (converged 7.1 s into the reply; now 4.1 s)."""
    far, echo, _ = room(40)
    far = np.concatenate([np.zeros(SAMPLE_RATE), far])  # the mic runs before the reply
    mic = to_pcm(np.concatenate([np.zeros(SAMPLE_RATE), echo]) + noise(len(far)))
    aec = canceller(max_delay_ms=1000, gate=True)
    farp = to_pcm(far)
    n = 2 * aec.frame
    opened = None
    for i in range(0, 8 * SAMPLE_RATE, n):
        aec.played(farp[i:i + n].tobytes(), i)
        aec.process(mic[i:i + n].tobytes(), i + n, timed=True)
        if opened is None and aec.converged:
            opened = (i + n - SAMPLE_RATE) / SAMPLE_RATE
    assert aec.bulk_found and aec.bulk == 0 and aec.realigned == 0
    assert opened is not None and opened < 5.0, opened


def first_reply(delay_ms: int, aec: EchoCanceller, seconds: float = 8.0,
                ) -> tuple[float | None, np.ndarray, int]:
    """A second of the mic before the reply, then the reply through a ``delay_ms`` room,
    in 40 ms frames paired by time: (when the gate opened, s into the reply; what went
    up; the sample of the reply it opened at)."""
    far, echo, _ = room(delay_ms)
    far = np.concatenate([np.zeros(SAMPLE_RATE), far])  # the mic runs before the reply
    mic = to_pcm(np.concatenate([np.zeros(SAMPLE_RATE), echo]) + noise(len(far)))
    farp = to_pcm(far)
    n = 2 * aec.frame
    out = []
    opened = None
    for i in range(0, int(seconds * SAMPLE_RATE), n):
        aec.played(farp[i:i + n].tobytes(), i)
        out.append(np.frombuffer(aec.process(mic[i:i + n].tobytes(), i + n, timed=True),
                                 "<i2"))
        if opened is None and aec.converged:
            opened = i + n
    up = np.concatenate(out).astype(np.float64)
    if opened is None:
        return None, up, len(up)
    return (opened - SAMPLE_RATE) / SAMPLE_RATE, up, opened


@pytest.mark.parametrize("delay_ms", [100, 130])
def test_a_move_of_the_bulk_delay_replays_and_a_short_hold_keeps_the_echo_out(
        delay_ms: int) -> None:
    """The first bulk estimate comes 1.6 s into the first reply (it needs that much
    speaker sound) and moves the reference by 50-80 ms: the filter is reset. The fresh
    filter is taught the last 2 s of mic audio at once, at the new alignment (the
    speaker's are still in the ring), so it does not start learning again from the
    estimate on; and the gate's hold is 0.5 s. Through `voiced run` the gate first
    opened 4.6 s into reply 1, past the test's allowance for gated blocks after 3 s.
    Before (no replay, a 1 s hold): 4.6 and 4.7 s here. The echo still stays below
    the simulator's VAD threshold (-40 dBFS) from the opening on."""
    from tests.room import loudest_10ms_dbfs

    aec = canceller(max_delay_ms=1000, gate=True)
    opened, up, at = first_reply(delay_ms, aec)
    assert aec.realigned == 1 and aec.bulk > 0 and aec.replayed >= 75
    assert opened is not None and opened < 3.0, opened
    assert loudest_10ms_dbfs(up[at:]) < -45


def test_a_kept_delay_needs_no_move_and_is_still_checked() -> None:
    """A canceller preset with the bulk delay kept from the last run (the daemon's
    state file) never moves its reference in the first reply: no reset, nothing to
    replay, and its gate opens as soon as the echo loss holds. A kept delay that no
    longer fits (another device) is moved by two estimates in a row that agree."""
    from tests.room import loudest_10ms_dbfs

    aec = canceller(max_delay_ms=1000, gate=True)
    aec.preset(50)  # what a 100 ms room's estimate leaves: 100 less the 50 ms margin
    opened, up, at = first_reply(100, aec)
    assert aec.realigned == 0 and aec.replayed == 0
    assert aec.bulk_estimated, "an estimate agreeing with the kept delay confirms it"
    assert opened is not None and opened < 3.0 and loudest_10ms_dbfs(up[at:]) < -45
    wrong = canceller(max_delay_ms=1000, gate=True)
    wrong.preset(600)
    assert wrong.bulk == 600 * 24 and wrong.bulk_found and not wrong.bulk_estimated
    first_reply(100, wrong)
    assert wrong.realigned == 1 and wrong.bulk == 50 * 24 and wrong.bulk_estimated
    with pytest.raises(ValueError, match="0..1000"):
        wrong.preset(1001)


def test_on_a_mic_of_digital_silence_the_canceller_itself_outputs_zero_blocks() -> None:
    """Why tests/test_aec_run.py's room adds a mic self-noise: its guard counts all-zero
    20 ms blocks as the convergence gate's silence, but on a mic that hands over exact
    zeros (the room had no noise floor) the canceller's own output, ungated, rounds to
    whole blocks of zeros where the speech pauses and where it cancels best (49 of 748
    after 3 s here, half of them with the echo over 1000 in the mic): through `voiced run`
    36 all-zero blocks in reply 1's window, every one after the gate had opened. With a
    noise floor of -80 dBFS there are none."""
    far, echo, _ = room(40)
    farp = to_pcm(far)
    zeros = []
    for level in (0.0, 3.0):
        mic = to_pcm(echo + noise(len(far), level))
        aec = canceller()
        n = 2 * aec.frame
        out = []
        for i in range(0, len(far) // n * n, n):
            aec.played(farp[i:i + n].tobytes(), i)
            out.append(np.frombuffer(aec.process(mic[i:i + n].tobytes(), i + n), "<i2"))
        up = np.concatenate(out)[int(CONVERGED_S * SAMPLE_RATE):]
        blocks = up[:len(up) // 480 * 480].reshape(-1, 480)
        zeros.append(int(np.sum(np.all(blocks == 0, axis=1))))
    assert zeros[0] > len(blocks) // 20 and zeros[1] == 0, zeros
