"""The naive client: what a competent person writes in an hour for a Realtime voice loop,
kept as the active-CPU baseline of issue 21 (no tuning tricks on purpose).

Run: ``python bench/naive_client.py URL DEVICE RATE [naive|soxr]``. A PyAudio mic
stream (callback, 20 ms frames) at ``RATE``; each frame is handed to asyncio and sent as a
base64 JSON ``input_audio_buffer.append``; ``response.output_audio.delta`` audio goes to a
player thread that blocks on a PyAudio output stream's ``write``. At 24 kHz (the wire rate)
nothing is resampled. At 48 kHz, ``naive`` (the default) decimates the mic by 2 (``[::2]``,
no filter: aliasing) and doubles the reply sample by sample (``np.repeat``: imaging);
``soxr`` resamples both ways properly with python-soxr streams at the daemon's quality
(LQ), the honest cost of a device rate that is not the wire's. Prints a JSON line of what
it did.
"""

import asyncio
import base64
import json
import queue
import signal
import sys
import threading

import numpy as np
import pyaudio
import soxr
from websockets.asyncio.client import connect

URL, DEVICE, RATE = sys.argv[1], sys.argv[2], int(sys.argv[3])
RESAMPLE = sys.argv[4] if len(sys.argv) > 4 else "naive"
FRAME = RATE // 50  # 20 ms


async def main() -> None:
    pa = pyaudio.PyAudio()
    dev = next(i for i in range(pa.get_device_count())
               if pa.get_device_info_by_index(i)["name"] == DEVICE)
    loop = asyncio.get_running_loop()
    mic_q: asyncio.Queue[bytes] = asyncio.Queue()
    play_q: queue.Queue[bytes] = queue.Queue()
    counts = {"appends": 0, "deltas": 0, "replies": 0}
    up = soxr.ResampleStream(RATE, 24000, 1, dtype="int16", quality="LQ")
    down = soxr.ResampleStream(24000, RATE, 1, dtype="int16", quality="LQ")

    def on_mic(data: bytes, n: int, t: object, s: int) -> tuple[None, int]:
        loop.call_soon_threadsafe(mic_q.put_nowait, data)
        return None, pyaudio.paContinue

    speaker = pa.open(format=pyaudio.paInt16, channels=1, rate=RATE, output=True,
                      frames_per_buffer=FRAME, output_device_index=dev)

    def player() -> None:
        while (pcm := play_q.get()):
            speaker.write(pcm)

    threading.Thread(target=player, daemon=True).start()
    mic = pa.open(format=pyaudio.paInt16, channels=1, rate=RATE, input=True,
                  frames_per_buffer=FRAME, input_device_index=dev, stream_callback=on_mic)
    async with connect(URL, max_size=None) as ws:
        print("connected", flush=True)
        async def send() -> None:
            while True:
                pcm = await mic_q.get()
                if RATE != 24000 and RESAMPLE == "soxr":
                    pcm = up.resample_chunk(np.frombuffer(pcm, "<i2")).tobytes()
                elif RATE != 24000:
                    pcm = np.frombuffer(pcm, "<i2")[::2].tobytes()
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm).decode()}))
                counts["appends"] += 1

        async def receive() -> None:
            async for msg in ws:
                ev = json.loads(msg)
                if ev["type"] == "response.output_audio.delta":
                    pcm = base64.b64decode(ev["delta"])
                    if RATE != 24000 and RESAMPLE == "soxr":
                        pcm = down.resample_chunk(np.frombuffer(pcm, "<i2")).tobytes()
                    elif RATE != 24000:
                        pcm = np.repeat(np.frombuffer(pcm, "<i2"), 2).tobytes()
                    play_q.put(pcm)
                    counts["deltas"] += 1
                elif ev["type"] == "response.done":
                    counts["replies"] += 1

        tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        print(json.dumps(counts), flush=True)
        for task in tasks:
            task.cancel()
    play_q.put(b"")
    mic.stop_stream()
    mic.close()


if __name__ == "__main__":
    asyncio.run(main())
