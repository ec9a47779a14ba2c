"""The room of tests/test_aec_run.py, as a process of its own: what a mic in a room hears.

One full-duplex PortAudio stream on ALSA's ``pulse`` device, recording the speaker's
monitor (``PULSE_SOURCE``) and playing into the mic's sink (``PULSE_SINK``). Each callback
turns the block it got into the block it plays: the speaker's sound from ``--delay-ms``
ago at ``--gain``, plus the user's voices. So the output timeline is paced by the output
device and the delay is a fixed offset in the room's own line, constant by construction:
no pipe between a reader and a writer can fill up when the machine is busy (the room as a
thread in pytest, parec -> pacat, let pacat's pipe grow from 400 ms to 1.2 s in one run).
Started with real-time scheduling by the test (``chrt -f``), which PortAudio's callback
thread inherits.

Commands on stdin, one a line: ``say PATH`` (a float32 .npy voice, from the next block
on), ``trigger PATH N`` (that voice once the monitor has had N samples since its next
loud one), ``stop`` (save ``--out``.npz: monitor, echo, voice; then exit). On stdout:
``at N`` (room samples so far, every 50 ms), ``voice N`` (a voice's first room sample),
``flags F N`` (PortAudio's over/underflow flags F at room sample N), ``saved``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np
import pyaudio

RATE = 24000
BLOCK = 480  # 20 ms
LOUD = 300  # the monitor's level that starts a trigger's count


class Room:
    def __init__(self, delay: int, gain: float) -> None:
        self.line = np.zeros(delay)
        self.gain = gain
        self.at = 0
        self.monitor: list[np.ndarray] = []
        self.echo: list[np.ndarray] = []
        self.voice: list[np.ndarray] = []
        self.pending: list[tuple[np.ndarray, int | None]] = []  # voice, trigger samples
        self.playing: list[tuple[np.ndarray, int]] = []
        self.trigger: tuple[np.ndarray, int] | None = None
        self.loud_since: int | None = None
        self.events: list[str] = []
        self.lock = threading.Lock()

    def step(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        with self.lock:
            pending, self.pending = self.pending, []
        for v, after in pending:
            if after is None:
                self.playing.append((v, self.at))
                with self.lock:
                    self.events.append(f"voice {self.at}")
            else:
                self.trigger = (v, after)
                self.loud_since = None
        if self.trigger is not None:
            loud = np.nonzero(np.abs(x) > LOUD)[0]
            if self.loud_since is None and len(loud):
                self.loud_since = self.at + int(loud[0])
            if self.loud_since is not None and \
                    self.at + n - self.loud_since >= self.trigger[1]:
                self.playing.append((self.trigger[0], self.at))
                with self.lock:
                    self.events.append(f"voice {self.at}")
                self.trigger = None
        line = np.concatenate([self.line, x])
        echo = line[:n] * self.gain
        self.line = line[n:]
        voice = np.zeros(n)
        for v, start in self.playing:
            part = v[self.at - start:self.at - start + n]
            voice[:len(part)] += part
        self.playing = [(v, s) for v, s in self.playing if self.at + n - s < len(v)]
        self.monitor.append(x.astype(np.int16))
        self.echo.append(echo.astype(np.float32))
        self.voice.append(voice.astype(np.float32))
        self.at += n
        return np.clip(np.round(echo + voice), -32768, 32767).astype("<i2")


def pulse_device(pa: pyaudio.PyAudio) -> int:
    for i in range(pa.get_device_count()):
        if pa.get_device_info_by_index(i)["name"] == "pulse":
            return i
    raise SystemExit("no ALSA device named pulse")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=int, required=True)
    ap.add_argument("--gain", type=float, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    room = Room(RATE * args.delay_ms // 1000, args.gain)

    def callback(data: bytes | None, frames: int, _t: object, flags: int
                 ) -> tuple[bytes, int]:
        x = np.frombuffer(data or b"", "<i2").astype(np.float64)
        if len(x) < frames:  # no input for this block: the room hears silence
            x = np.concatenate([x, np.zeros(frames - len(x))])
        if flags:
            with room.lock:
                room.events.append(f"flags {flags} {room.at}")
        return room.step(x).tobytes(), pyaudio.paContinue

    pa = pyaudio.PyAudio()
    dev = pulse_device(pa)
    stream = pa.open(rate=RATE, channels=1, format=pyaudio.paInt16, input=True,
                     output=True, input_device_index=dev, output_device_index=dev,
                     frames_per_buffer=BLOCK, stream_callback=callback)
    stop = threading.Event()

    def report() -> None:
        while not stop.is_set():
            with room.lock:
                events, room.events = room.events, []
            for e in [*events, f"at {room.at}"]:
                print(e, flush=True)
            time.sleep(0.05)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    for raw in sys.stdin:
        cmd = raw.split()
        if not cmd:
            continue
        if cmd[0] == "stop":
            break
        voice = np.load(cmd[1]).astype(np.float64)
        with room.lock:
            room.pending.append((voice, int(cmd[2]) if cmd[0] == "trigger" else None))
    stream.stop_stream()
    stream.close()
    pa.terminate()
    stop.set()
    reporter.join()
    for e in room.events:
        print(e, flush=True)
    np.savez(args.out, monitor=np.concatenate(room.monitor),
             echo=np.concatenate(room.echo), voice=np.concatenate(room.voice))
    print(f"at {room.at}", flush=True)
    print("saved", flush=True)


if __name__ == "__main__":
    main()
