"""PyAudio on clocked devices (a PulseAudio null sink): barge-in, and a device that
disappears and comes back while `voiced run` is running.

PortAudio runs in child processes: ALSA reads its configuration once per process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, voiced_cmd, write_config
from tests.pulse import Pulse, running_pulse
from tests.test_e2e import ctl, wait_for_status
from voiced.audio.pyaudio_backend import PyAudioSource
from voiced.config import AudioEndpointSettings
from voiced.errors import AudioDeviceError
from voiced.sim.server import SimOptions, SimServer

# Both barge-in scripts: a speaker on the null sink (speaker period from argv[1]), a mic on
# its monitor, and a tone that is never 0, so what reached the sink can be counted; the
# mic records from the start, and the speaker counts its drains.
PULSE_RIG = """
import asyncio, json, os, sys
import numpy as np
from voiced.audio.pyaudio_backend import PyAudioSink, PyAudioSource
from voiced.config import AudioEndpointSettings
async def main():
    mic = PyAudioSource(AudioEndpointSettings(device="pulse"))  # the sink's monitor
    speaker = PyAudioSink(AudioEndpointSettings(device="pulse"), period_ms=int(sys.argv[1]),
                          jitter_ms=80)
    drains = []
    speaker.set_drained_callback(lambda: drains.append(1))
    await mic.start()
    await speaker.start()
    t = np.arange(24000 * 3)
    tone = (3000 + 2000 * np.sin(2 * np.pi * 440 * t / 24000)).astype("<i2")  # never 0
    heard = bytearray()
    async def record():
        while True:
            heard.extend(await mic.read())
    task = asyncio.create_task(record())
    await asyncio.sleep(0.3)
    async def until(pred):  # events, not wall time: the machine may be busy
        for _ in range(1200):  # 60 s at most (the parent's timeout)
            if pred():
                return
            await asyncio.sleep(0.05)
        raise SystemExit("timed out waiting")
    def handed():
        return speaker._handed.get("item_1", 0)
    async def record_the_rest(stopped_at):
        # what was handed before the stop still plays: record until the stream (stream
        # time, not wall time) has 0.6 s past the stop and ends in 0.3 s of silence
        def done():
            a = np.frombuffer(bytes(heard), "<i2")
            nz = np.nonzero(a)[0]
            return (len(a) - stopped_at >= 0.6 * 24000 and len(nz) > 0
                    and len(a) - 1 - nz[-1] >= 0.3 * 24000)
        await until(done)
"""

BARGE_IN = PULSE_RIG + """\
    speaker.play(tone.tobytes(), "item_1")
    await until(lambda: handed() >= 24000)  # a second of the tone is at the device
    played = speaker.stop()  # the barge-in
    # the callback threads' names now: the speaker's stream stops its idle grace (0.5 s)
    # after the stop, and its thread with it, before the recording below ends
    threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip()
                     for t in os.listdir("/proc/self/task"))
    await record_the_rest(len(heard) // 2)
    task.cancel()
    a = np.frombuffer(bytes(heard), "<i2")
    nz = np.nonzero(a)[0]
    # the tone's samples, counted (never 0): a late callback on a busy machine puts a gap
    # of silence into the sink's stream, so the span from first to last sample is longer
    print(json.dumps({"reported": played.get("item_1", 0), "heard": len(nz),
                      "lost": mic.dropped_frames + mic.overflows,
                      "rate": speaker.rate, "threads": threads}))
    await mic.aclose()
    await speaker.aclose()
asyncio.run(main())
"""


@pytest.mark.parametrize("period_ms", [10, 20])
def test_barge_in_silences_the_speaker_where_stop_says(tmp_path: Path, period_ms: int) -> None:
    """The played position stop() reports is what reached the device, to the period.

    The tone cannot be called back once handed to PortAudio, so silence comes one output
    latency after the stop; nothing beyond what stop() reported may be heard, and the
    reported position must not over-state what was heard either. Both the default
    speaker period (20 ms) and the faster-stopping 10 ms.
    """
    with running_pulse(tmp_path) as pulse:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(BARGE_IN), str(period_ms)],
                           env=pulse.env(), capture_output=True, text=True, timeout=60,
                           check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["rate"] == 24000
    period = 24000 * period_ms // 1000
    # a second or more of the tone was handed before the stop, not all of it
    assert 24000 <= got["reported"] < 3 * 24000, got
    assert got["heard"] <= got["reported"] + period, got  # silent after what was handed
    if not got["lost"]:  # (a capture that dropped frames under load heard less)
        assert got["reported"] - got["heard"] <= period, got  # and truncation does not lie
    # PortAudio's callback threads carry names top -H shows
    assert {"voiced-mic", "voiced-speaker"} <= set(got["threads"]), got["threads"]


UNDERRUN_THEN_BARGE_IN = PULSE_RIG + """\
    speaker.play(tone[:12000].tobytes(), "item_1")  # half a second, then the network stalls
    await until(lambda: drains)  # it ran dry
    await asyncio.sleep(0.3)  # and stayed dry a while (a gap in what the sink got)
    underran = len(drains)
    speaker.play(tone[12000:].tobytes(), "item_1")  # the same item resumes
    await until(lambda: handed() >= 12000 + 0.3 * 24000)
    played = speaker.stop()  # the barge-in
    await record_the_rest(len(heard) // 2)
    task.cancel()
    a = np.frombuffer(bytes(heard), "<i2")
    print(json.dumps({"reported": played.get("item_1", 0), "heard": int(np.count_nonzero(a)),
                      "underran": underran}))
    await mic.aclose()
    await speaker.aclose()
asyncio.run(main())
"""


def test_barge_in_after_an_underrun_counts_the_whole_item(tmp_path: Path) -> None:
    """A reply that ran dry (the network fell behind) and resumed is still one item: the
    played position at a barge-in counts its audio from before the underrun too, or the
    truncation would tell the model the user heard less than they did (0 ms, even)."""
    with running_pulse(tmp_path) as pulse:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(UNDERRUN_THEN_BARGE_IN),
                            "20"], env=pulse.env(), capture_output=True, text=True,
                           timeout=60, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["underran"] == 1, got  # the first half second did run dry
    period = 24000 * 20 // 1000
    # both parts, not the second only (the stop came once that much was handed)
    assert got["reported"] >= 12000 + 0.3 * 24000, got
    assert abs(got["reported"] - got["heard"]) <= period, got  # and what reached the sink


@pytest.mark.timeout(300)  # several waits of up to TIMEOUT each
async def test_run_survives_the_sound_device_disappearing(tmp_path: Path) -> None:
    """Unplugged: error state naming the device, retries; plugged back: listening again."""
    with running_pulse(tmp_path) as pulse:
        async with SimServer(SimOptions()) as sim:
            cfg = write_config(tmp_path, sim.url, audio={
                "backend": "pyaudio", "input": {"device": "pulse", "file": None},
                "output": {"device": "pulse", "file": None}, "reopen_s": 0.2})
            log = tmp_path / "voiced.log"
            with log.open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    *voiced_cmd("run", "-c", str(cfg)), env=pulse.env(),
                    stdout=asyncio.subprocess.DEVNULL, stderr=err)
            try:
                await _unplug_and_replug(cfg, pulse)
            finally:
                if proc.returncode is None:
                    proc.terminate()
                rc = await asyncio.wait_for(proc.wait(), TIMEOUT)
            text = log.read_text()
            assert rc == 0, text[-3000:]
            assert "Traceback" not in text, text[-3000:]
            assert "audio device failed" in text and "open again" in text, text[-3000:]


async def _unplug_and_replug(cfg: Path, pulse: Pulse) -> None:
    seen: list[str] = []
    await wait_for_status(cfg, lambda s: s["state"] == "ready", seen)
    await ctl(cfg, "press")
    st = await wait_for_status(cfg, lambda s: s["state"] == "listening"
                               and s["audio_sent_ms"] > 300, seen)
    pulse.unplug()
    st = await wait_for_status(cfg, lambda s: s["state"] == "error", seen)
    assert "pulse" in st["detail"] and "retrying" in st["detail"], st
    await asyncio.sleep(1.0)  # several reopen attempts fail while it is gone
    st = await ctl(cfg, "status")
    assert st["state"] == "error", st
    pulse.plug()
    st = await wait_for_status(cfg, lambda s: s["state"] == "listening", seen)
    assert st["device_faults"] == 1, st  # one fault, however many attempts it took
    sent = st["audio_sent_ms"]
    await wait_for_status(cfg, lambda s: s["audio_sent_ms"] > sent + 300, seen)


MIC_GONE = """
import asyncio, json, sys, time
from voiced.audio.pyaudio_backend import PyAudioSource
from voiced.config import AudioEndpointSettings
from voiced.errors import AudioDeviceError
async def main():
    mic = PyAudioSource(AudioEndpointSettings(device="pulse"))
    await mic.start()
    for _ in range(10):
        await mic.read()
    print("unplug", flush=True)
    sys.stdin.readline()  # the parent has removed the device
    t0 = time.monotonic()
    try:
        while True:
            await mic.read()  # what was queued, then nothing more
    except AudioDeviceError as e:
        gone = {"error": str(e), "after_s": time.monotonic() - t0}
    await mic.aclose()
    try:
        await mic.read()
    except AudioDeviceError as e:
        gone["closed"] = str(e)
    print(json.dumps(gone))
asyncio.run(main())
"""


def test_a_mic_that_stops_delivering_is_reported_by_read(tmp_path: Path) -> None:
    """read() raises within about 2 s of the last callback, naming the device."""
    with running_pulse(tmp_path) as pulse:
        p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(MIC_GONE)],
                             env=pulse.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdin is not None
            assert p.stdout.readline().strip() == "unplug"
            pulse.unplug()
            out, err = p.communicate("go\n", timeout=TIMEOUT)
        finally:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert "pulse" in got["error"] and "delivers no audio" in got["error"], got
    # when: the 2 s threshold is test_read_waits_for_two_seconds_without_a_callback's
    assert 0 <= got["after_s"] < TIMEOUT, got
    assert got["closed"] == "microphone is closed", got


class _ClosedStream:
    """Stands in for the PortAudio stream at the moment it is closed (no device needed:
    the race is between the loop and the thread that closes)."""

    def stop_stream(self) -> None: ...

    def close(self) -> None: ...


class _PortAudio:
    """Stands in for the PortAudio instance an open mic holds."""

    def terminate(self) -> None: ...


async def test_read_waits_for_two_seconds_without_a_callback() -> None:
    """A mic whose last callback is recent is waited for, not reported gone; one silent
    for the whole threshold is (its name in the error)."""
    from voiced.audio import pyaudio_backend

    mic = PyAudioSource(AudioEndpointSettings(device="pulse"))
    mic._loop = asyncio.get_running_loop()
    mic._pa, mic._stream, mic._generation = _PortAudio(), _ClosedStream(), 1
    mic._last_callback = time.monotonic() + 3600  # as recent as can be, however slow we are
    reader = asyncio.create_task(mic.read())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not reader.done()  # waiting for audio, not calling the mic gone
    mic._deliver([b"\x01\x00" * 480], 1)
    assert await asyncio.wait_for(reader, TIMEOUT) == b"\x01\x00" * 480
    mic._last_callback = time.monotonic() - pyaudio_backend._MIC_SILENCE_S
    with pytest.raises(AudioDeviceError, match="delivers no audio"):
        await asyncio.wait_for(mic.read(), TIMEOUT)
    assert pyaudio_backend._MIC_SILENCE_S == 2.0


async def test_a_hand_over_still_queued_at_close_does_not_leak_into_the_next_stream() -> None:
    """The last callback's frames can reach the loop after the stream was closed; they
    belong to the old device and must not come out of read() (found in review)."""
    mic = PyAudioSource(AudioEndpointSettings(device="pulse"))
    mic._loop = asyncio.get_running_loop()
    mic._pa, mic._stream, mic._generation = _PortAudio(), _ClosedStream(), 1
    mic._loop.call_soon(mic._deliver, [b"\x01\x00" * 480], 1)  # queued by the callback
    mic._close()  # on the worker thread, before the loop ran the hand-over
    await asyncio.sleep(0)  # now it runs
    with pytest.raises(AudioDeviceError, match="microphone is closed"):
        await mic.read()
