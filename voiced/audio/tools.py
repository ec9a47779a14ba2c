"""`voiced devices` and `voiced test-audio`: what an installer runs first."""

from __future__ import annotations

import asyncio
import math
from typing import TextIO

from voiced.audio import AudioSink, AudioSource
from voiced.audio.pyaudio_backend import LISTED_RATES, list_devices, open_portaudio, supported_rates
from voiced.wire import SAMPLE_RATE


def print_devices(out: TextIO) -> int:
    """List every audio device with channels, rates and which are the defaults."""
    pa = open_portaudio()
    try:
        devices = list_devices(pa)
        try:
            default_in = pa.get_default_input_device_info()["index"]
        except OSError:
            default_in = None
        try:
            default_out = pa.get_default_output_device_info()["index"]
        except OSError:
            default_out = None
        if not devices:
            print("no audio devices found (is the USB mic plugged in? is the user in the "
                  "audio group?)", file=out)
            return 1
        for d in devices:
            tags = []
            if d.index == default_in:
                tags.append("default input")
            if d.index == default_out:
                tags.append("default output")
            print(f"{d.index:3d}  {d.name}" + (f"  [{', '.join(tags)}]" if tags else ""),
                  file=out)
            print(f"     {d.host_api}; in {d.max_input_channels} ch, out "
                  f"{d.max_output_channels} ch; default rate {d.default_rate} Hz", file=out)
            if d.max_input_channels:
                rates = supported_rates(pa, d, is_input=True, rates=LISTED_RATES)
                print(f"     input rates:  {_rates(rates)}", file=out)
            if d.max_output_channels:
                rates = supported_rates(pa, d, is_input=False, rates=LISTED_RATES)
                print(f"     output rates: {_rates(rates)}", file=out)
        return 0
    finally:
        pa.terminate()


def _rates(rates: list[int]) -> str:
    return ", ".join(f"{r / 1000:g}k" for r in rates) or "none of 8k-48k (mono)"


def levels(pcm: bytes) -> tuple[float, float, int]:
    """Peak dBFS, RMS dBFS and the number of clipped samples of PCM16."""
    a = memoryview(pcm)[:len(pcm) // 2 * 2].cast("h")  # a few seconds: plain Python is quick
    if not len(a):
        return -math.inf, -math.inf, 0
    magnitudes = [abs(x) for x in a]
    peak = max(magnitudes) / 32768
    rms = math.sqrt(math.fsum(x * x for x in a) / len(a)) / 32768
    clipped = sum(1 for m in magnitudes if m >= 32767)

    def db(x: float) -> float:
        return 20 * math.log10(x) if x > 0 else -math.inf

    return db(peak), db(rms), clipped


async def test_audio(source: AudioSource, sink: AudioSink, seconds: float,
                     out: TextIO) -> int:
    """Record ``seconds`` from the mic, report levels, play it back; 0 when all worked."""
    await source.start()
    source.mic_opened()
    drained = asyncio.Event()
    sink.set_drained_callback(drained.set)
    await sink.start()
    try:
        print(f"recording {seconds:g} s: speak now...", file=out, flush=True)
        frames = []
        got = 0
        while got < seconds * SAMPLE_RATE * 2:
            f = await source.read()
            frames.append(f)
            got += len(f)
        pcm = b"".join(frames)
        peak, rms, clipped = levels(pcm)
        print(f"peak {peak:.1f} dBFS, RMS {rms:.1f} dBFS, {clipped} clipped samples",
              file=out)
        if peak < -50:
            print("warning: almost silence; check the mic, its gain (alsamixer) and "
                  "audio.input.device", file=out)
        if clipped:
            print("warning: clipping; lower the mic gain", file=out)
        print("playing it back...", file=out, flush=True)
        if sink.play(pcm, "test-audio") < len(pcm):
            print(f"playing only the first {sink.queued_s:.0f} s (audio.max_queued_s)",
                  file=out)
        await asyncio.wait_for(drained.wait(), seconds + 10)
        print("done", file=out)
        return 0
    finally:
        await source.aclose()
        await sink.aclose()
