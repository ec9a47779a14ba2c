"""Idle at zero (issue 21): in ``ready`` the mic's and the speaker's streams stop, and
start again on a press or on reply audio, without a click and with faults still seen.

Speed is the benchmark's (bench/idle_bench.py); these check behaviour only.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import QUESTION_WAV, TIMEOUT, clean_env
from tests.pulse import running_pulse
from tests.test_pyaudio import alsa_home
from tests.test_supervisor import running
from voiced.audio.filebackend import WavFileSource
from voiced.audio.pyaudio_backend import PyAudioSource
from voiced.config import AudioEndpointSettings
from voiced.core.effects import State
from voiced.errors import AudioDeviceError
from voiced.sim.server import SimOptions, SimServer


class _Stream:
    """Stands in for a PortAudio stream's start and stop (the worker thread's calls);
    ``fail`` makes a start fail, as it does for a device unplugged while stopped."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail = False

    def start_stream(self) -> None:
        self.calls.append("start")
        if self.fail:
            raise OSError("[Errno -9996] Invalid device")

    def stop_stream(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


class _PortAudio:
    """Stands in for the PortAudio instance, which stays while the mic is parked."""

    def terminate(self) -> None: ...


async def _until(pred: Callable[[], bool]) -> None:
    """Until the worker thread has done what ``pred`` looks for (polled: it is a thread)."""
    async def loop() -> None:
        while not pred():  # noqa: ASYNC110 - a thread's doing, no event to wait on
            await asyncio.sleep(0.01)
    await asyncio.wait_for(loop(), TIMEOUT)


def _parkable_mic() -> tuple[PyAudioSource, list[_Stream], list[str]]:
    """A mic whose streams are ``_Stream``s: the first one open, each reopen a new one
    (``fail`` in the list makes the next reopen fail, as for a mic unplugged in ready)."""
    mic = PyAudioSource(AudioEndpointSettings(device="pulse"))
    mic._loop = asyncio.get_running_loop()
    mic._pa = _PortAudio()
    streams = [_Stream()]
    plan: list[str] = []

    def reopen(*, start: bool) -> _Stream:
        assert start
        mic._generation += 1
        if plan and plan.pop(0) == "fail":
            raise AudioDeviceError('microphone "pulse" cannot be opened: Invalid device')
        streams.append(_Stream())
        return streams[-1]

    mic._new_stream = reopen  # type: ignore[method-assign]
    mic._stream, mic._generation = streams[0], 1
    return mic, streams, plan


async def test_a_parked_mic_waits_without_a_fault_and_delivers_once_reopened() -> None:
    from voiced.audio import pyaudio_backend
    mic, streams, _ = _parkable_mic()
    mic.set_capturing(False)
    await _until(lambda: streams[0].calls == ["stop", "close"])
    assert mic._stream is None  # parked: closed, not only stopped
    mic._last_callback -= 10 * pyaudio_backend._MIC_SILENCE_S  # silent for long: parked
    reader = asyncio.create_task(mic.read())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not reader.done()  # parked on purpose: no "delivers no audio"
    mic._deliver([b"\x02\x00" * 480], 1)  # a hand-over from before the park: dropped
    for _ in range(5):
        await asyncio.sleep(0)
    assert not reader.done()
    mic.set_capturing(True)
    await _until(lambda: len(streams) == 2)
    mic._deliver([b"\x01\x00" * 480], mic._generation)  # the new stream's first block
    assert await asyncio.wait_for(reader, TIMEOUT) == b"\x01\x00" * 480
    assert streams[1].calls == []  # opened running (pa.open's start=True)


async def test_a_mic_that_cannot_open_again_is_reported_by_read() -> None:
    """A fault while parked (the USB mic pulled out in ready) shows on the press."""
    mic, streams, plan = _parkable_mic()
    mic.set_capturing(False)
    await _until(lambda: streams[0].calls == ["stop", "close"])
    reader = asyncio.create_task(mic.read())
    plan.append("fail")
    mic.set_capturing(True)
    with pytest.raises(AudioDeviceError, match="cannot be opened"):
        await asyncio.wait_for(reader, TIMEOUT)


async def test_a_closed_mic_is_not_reopened_by_a_late_press() -> None:
    mic, streams, _ = _parkable_mic()
    mic.set_capturing(False)
    await _until(lambda: streams[0].calls == ["stop", "close"])
    await mic.aclose()
    mic.set_capturing(True)
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert len(streams) == 1
    with pytest.raises(AudioDeviceError, match="closed"):
        await asyncio.wait_for(mic.read(), TIMEOUT)


# The mic on the PulseAudio stand-in: what the server has of this client while the mic
# runs, once parked, and once running again (a stopped ALSA pulse stream is prepared
# again by PortAudio and the server streams into it: only a closed one is quiet).
PARK_PULSE = """
import asyncio, json, subprocess
from voiced.audio.pyaudio_backend import PyAudioSource
from voiced.config import AudioEndpointSettings

def outputs():
    r = subprocess.run(["pactl", "list", "short", "source-outputs"], capture_output=True,
                       text=True, check=True)
    return len(r.stdout.splitlines())

async def until(pred):
    while not pred():
        await asyncio.sleep(0.02)

async def main():
    mic = PyAudioSource(AudioEndpointSettings(device="pulse", rate_hz=48000))
    await mic.start()
    seen = {}
    await asyncio.wait_for(mic.read(), 10)
    seen["running"] = outputs()
    mic.set_capturing(False)
    try:  # what the server has of it once the stop has been done (a stopped stream: 1)
        await asyncio.wait_for(until(lambda: outputs() == 0), 10)
    except TimeoutError:
        pass
    seen["parked"] = outputs()
    seen["thread states kept while parked"] = mic.callback_thread.kept
    mic.set_capturing(True)
    await asyncio.wait_for(mic.read(), 10)
    seen["reopened"] = outputs()
    await mic.aclose()
    # opened while the mic is off (a start, or a reopen after a fault, in ready): parked
    off = PyAudioSource(AudioEndpointSettings(device="pulse", rate_hz=48000))
    off.set_capturing(False)
    await off.start()
    seen["opened while off"] = outputs()
    await off.aclose()
    print(json.dumps(seen))

asyncio.run(main())
"""


def test_a_parked_mic_leaves_nothing_streaming_in_the_sound_server(tmp_path: Path) -> None:
    with running_pulse(tmp_path) as pulse:
        pulse.add_sink("mic", 48000)
        r = subprocess.run([sys.executable, "-c", PARK_PULSE], capture_output=True,
                           text=True, timeout=TIMEOUT,
                           env=clean_env(**pulse.env(PULSE_SOURCE="mic.monitor")))
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.splitlines()[-1])
    assert seen == {"running": 1, "parked": 0, "thread states kept while parked": 0,
                    "reopened": 1, "opened while off": 0}


class _RecordingSource(WavFileSource):
    """The WAV mic, recording what it is told about its stream."""

    def __init__(self) -> None:
        super().__init__(QUESTION_WAV)
        self.capturing: list[bool] = []

    def set_capturing(self, on: bool) -> None:
        self.capturing.append(on)


async def test_the_mic_stream_stops_in_ready_and_runs_while_the_mic_is_on(
        tmp_path: Path) -> None:
    src = _RecordingSource()
    async with SimServer(SimOptions()) as sim, running(tmp_path, sim, source=src) as h:
        await h.wait(lambda: h.state == State.READY)
        assert src.capturing == [False]  # stopped before the first frame was wanted
        h.sup._on_control("press")
        await h.wait(lambda: h.state == State.LISTENING)
        assert src.capturing == [False, True]
        h.sup._on_control("press")
        await h.wait(lambda: src.capturing == [False, True, False])
        # the wake word's hook: the mic captures while off too, until it lets go
        h.sup.keep_mic_open = True
        assert src.capturing[-1] is True and h.state == State.READY
        h.sup.keep_mic_open = False
        assert src.capturing[-1] is False


# A speaker on the file device (out.raw gets exactly what it was handed) that idles after
# 0.3 s: a reply, idle, a second reply, idle; it prints whether the stream ran meanwhile.
IDLE_PLAY = """
import asyncio, json, sys
from voiced.audio.pyaudio_backend import PyAudioSink
from voiced.config import AudioEndpointSettings
async def main():
    sink = PyAudioSink(AudioEndpointSettings(device="usbmic", rate_hz=24000), idle_s=0.3)
    drained = asyncio.Event()
    sink.set_drained_callback(drained.set)
    await sink.start()
    seen = {"at_start": sink._stream.is_active()}
    for i, f in enumerate(sys.argv[1:]):
        drained.clear()
        sink.play(open(f, "rb").read(), f"item_{i}")
        seen[f"playing_{i}"] = sink.running
        await asyncio.wait_for(drained.wait(), 10)
        while sink.running or sink._stream.is_active():  # the grace period, then the stop
            await asyncio.sleep(0.05)
        seen[f"idle_{i}"] = sink._stream.is_active()
    await sink.aclose()
    print(json.dumps(seen))
asyncio.run(main())
"""


def test_the_speaker_stops_when_idle_and_starts_on_reply_audio_without_a_click(
        tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    t = np.arange(12000)
    replies = []
    for i, hz in enumerate((440, 660)):
        # loud from the first sample to the last: a stream started or stopped inside the
        # reply, or one not started at silence, would cut it or put noise around it
        pcm = (8000 + 4000 * np.sin(2 * np.pi * hz * t / 24000)).astype("<i2").tobytes()
        (tmp_path / f"r{i}.raw").write_bytes(pcm)
        replies.append(pcm)
    p = subprocess.run([sys.executable, "-c", IDLE_PLAY, str(tmp_path / "r0.raw"),
                        str(tmp_path / "r1.raw")], env=clean_env(HOME=str(home)),
                       capture_output=True, text=True, timeout=TIMEOUT * 2, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert seen == {"at_start": False, "playing_0": True, "idle_0": False,
                    "playing_1": True, "idle_1": False}, seen
    out = np.frombuffer((tmp_path / "out.raw").read_bytes(), "<i2")
    sound = np.flatnonzero(out)
    # what the device got: silence, reply 0, silence, reply 1, silence; nothing else
    assert out[sound].tobytes() == b"".join(replies)
    first_end = sound[len(replies[0]) // 2 - 1]
    assert sound[len(replies[0]) // 2] > first_end + 1, "no silence between the replies"


MARGIN = """
import asyncio, json, sys
from voiced.audio.pyaudio_backend import PyAudioSink
from voiced.config import AudioEndpointSettings
async def main():
    sink = PyAudioSink(AudioEndpointSettings(device="usbmic", rate_hz=24000),
                       start_margin_ms=int(sys.argv[1]), jitter_ms=400)
    drained = asyncio.Event()
    sink.set_drained_callback(drained.set)
    await sink.start()
    sink.play(bytes(range(1, 201)) * 48, "item_0")  # 200 ms: half the jitter buffer
    sink.play(bytes(range(1, 201)) * 48, "item_0")  # all of it, at once
    await asyncio.wait_for(drained.wait(), 10)
    await sink.aclose()
    print(json.dumps(list(sink.start_latencies)))
asyncio.run(main())
"""


def test_a_reply_starts_no_sooner_than_the_start_margin(tmp_path: Path) -> None:
    """A reply whose first audio fills the jitter buffer at once still waits the margin
    (a lower bound: a slow machine only waits longer), so audio that keeps coming at
    real-time pace finds that much queued; the bench counts the gaps it saves."""
    home = alsa_home(tmp_path)
    p = subprocess.run([sys.executable, "-c", MARGIN, "300"], env=clean_env(HOME=str(home)),
                       capture_output=True, text=True, timeout=TIMEOUT * 2, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    (latency,) = json.loads(p.stdout.strip().splitlines()[-1])
    assert latency >= 0.3


# A 0.3 s earcon on a speaker with a 0.1 s grace whose stream takes 0.6 s to start (a
# loaded machine, a slow host): keep_awake's timer runs out before the earcon has played.
EARCON_SLOW_START = """
import asyncio, sys, time
import numpy as np
import voiced.audio.pyaudio_sink as ps
from voiced.audio.pipeline import SpeakerMix
from voiced.audio.pyaudio_backend import PyAudioSink
from voiced.config import AudioEndpointSettings
switch = ps.switch_stream
def slow(stream, on, *a):
    if on:
        time.sleep(0.6)
    return switch(stream, on, *a)
ps.switch_stream = slow
async def main():
    sink = PyAudioSink(AudioEndpointSettings(device="usbmic", rate_hz=24000), idle_s=0.1)
    await sink.start()
    mix = SpeakerMix(sink)
    sink.output_filter = mix
    t = np.arange(7200)
    mix.add((8000 + 4000 * np.sin(2 * np.pi * 440 * t / 24000)).astype("<i2").tobytes())
    deadline = time.monotonic() + 20
    while sink.running or sink._stream.is_active():  # until the grace ran out and it stopped
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await sink.aclose()
    print("left", len(mix._overlay))
asyncio.run(main())
"""


def test_an_earcon_plays_whole_when_its_stream_starts_later_than_the_grace(
        tmp_path: Path) -> None:
    """keep_awake reckons the earcon's length plus the grace from the moment it is added;
    a stream that starts later than that must still play all of it before stopping
    (fails before the fix: the stop came with most of the earcon still pending)."""
    home = alsa_home(tmp_path)
    p = subprocess.run([sys.executable, "-c", EARCON_SLOW_START],
                       env=clean_env(HOME=str(home)), capture_output=True, text=True,
                       timeout=TIMEOUT * 2, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split()[-2:] == ["left", "0"], p.stdout
    out = np.frombuffer((tmp_path / "out.raw").read_bytes(), "<i2")
    assert np.count_nonzero(out) == 7200  # the whole earcon reached the device
