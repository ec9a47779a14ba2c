"""Issue 21 (active CPU): an audio callback's Python thread state is kept from one
callback to the next on PortAudio's thread, and freed once the stream's thread has ended.

PyAudio takes the GIL for each callback with ``PyGILState_Ensure``; on a thread Python
did not start that made a new thread state (and mapped a new frame stack) per callback.
A ``threading.local`` lives in the thread state, so it shows which: a value set in one
callback is still there in the next only if the state was kept. Real PortAudio streams on
the timer-clocked ALSA device (tests/clock_device.py), in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TIMEOUT
from tests.test_pyaudio import clocked_mic

STREAMS = """
import asyncio, json, threading, weakref
from voiced.audio.pyaudio_backend import PyAudioSink, PyAudioSource
from voiced.config import AudioEndpointSettings

class Marker:
    pass

def watch(counts, refs):
    local = threading.local()
    def seen(data):
        counts["calls"] += 1
        if not getattr(local, "seen", False):  # a new thread state: set it once there
            counts["fresh"] += 1
            local.seen = marker = Marker()
            refs.append(weakref.ref(marker))  # dies with the state it lives in
        return data
    return seen

async def until(pred):
    while not pred():
        await asyncio.sleep(0.01)

async def main():
    out = {}
    # the speaker: a reply, the stream stopped after its idle grace, a second reply
    sink = PyAudioSink(AudioEndpointSettings(device="clock", rate_hz=48000), idle_s=0.1,
                       jitter_ms=40, start_margin_ms=0)
    spk, spk_refs = {"calls": 0, "fresh": 0}, []
    sink.output_filter = watch(spk, spk_refs)
    drained = asyncio.Event()
    sink.set_drained_callback(drained.set)
    await sink.start()
    for item in ("a", "b"):
        drained.clear()
        sink.play(bytes(2 * 24000 // 2), item)  # 0.5 s
        await asyncio.wait_for(drained.wait(), 20)
        await asyncio.wait_for(until(lambda: not sink._started), 20)
        out[f"speaker kept after stop {item}"] = sink.callback_thread.kept
    await sink.aclose()
    # the mic: running, stopped, running again, closed
    mic = PyAudioSource(AudioEndpointSettings(device="clock", rate_hz=48000), block_ms=20)
    mic_counts, mic_refs = {"calls": 0, "fresh": 0}, []
    mic.frame_filter = watch(mic_counts, mic_refs)
    await mic.start()
    for _ in range(15):
        await asyncio.wait_for(mic.read(), 20)
    out["mic kept while running"] = mic.callback_thread.kept
    mic.set_capturing(False)
    await asyncio.wait_for(until(lambda: mic.callback_thread.kept == 0), 20)
    mic.set_capturing(True)
    for _ in range(15):
        await asyncio.wait_for(mic.read(), 20)
    await mic.aclose()
    out["mic kept after close"] = mic.callback_thread.kept
    import gc
    gc.collect()
    out.update(speaker=spk, mic=mic_counts,
               alive=sum(r() is not None for r in spk_refs + mic_refs))
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_callback_thread_keeps_one_python_state_per_stream_start(tmp_path: Path) -> None:
    env = clocked_mic(tmp_path, bytes(48000 * 2))
    p = subprocess.run([sys.executable, "-c", STREAMS], env=env, capture_output=True,
                       text=True, timeout=TIMEOUT * 2, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    # dozens of callbacks, each stream start one thread and one kept state (before: a
    # new state for every callback, "fresh" equal to "calls")
    assert got["speaker"]["calls"] >= 40, got
    assert got["speaker"]["fresh"] == 2, got
    assert got["mic"]["calls"] >= 30, got
    assert got["mic"]["fresh"] == 2, got
    assert got["mic kept while running"] == 1, got
    # the states of ended threads are freed: nothing kept, the markers in them gone
    assert got["speaker kept after stop a"] == 0, got
    assert got["speaker kept after stop b"] == 0, got
    assert got["mic kept after close"] == 0, got
    assert got["alive"] == 0, got
