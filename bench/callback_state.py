"""What a Python callback per period costs PortAudio's thread (issue 21): a bare 48 kHz
output stream on the timer-clocked ALSA device, 20 ms periods, interleaved runs of

- ``fresh``: a plain Python callback (PyAudio makes a Python thread state per call);
- ``kept``: the same with the thread state kept (``voiced.threads.CallbackThread``);
- ``write``: no callback, a Python thread blocking in PyAudio's ``write`` 100 ms at a
  time (the naive client's speaker).

Run: ``.venv/bin/python bench/callback_state.py [--seconds 15] [--rounds 3]``. Prints
CPU % of one core per run (``time.process_time``: the whole child process).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.clock_device import clock_device_env  # noqa: E402

CHILD = """
import os, sys, threading, time
import pyaudio
from voiced.threads import CallbackThread
mode, seconds = sys.argv[1], float(sys.argv[2])
pa = pyaudio.PyAudio()
dev = next(i for i in range(pa.get_device_count())
           if pa.get_device_info_by_index(i)["name"] == "clock")
silence = bytes(1920)  # 20 ms at 48 kHz mono
thread = CallbackThread("bench-callback")
def callback(in_data, frames, time_info, status):
    if mode == "kept":
        thread.enter()
    return silence, pyaudio.paContinue
kw = dict(format=pyaudio.paInt16, channels=1, rate=48000, output=True,
          output_device_index=dev, frames_per_buffer=960)
if mode == "write":
    stream = pa.open(**kw)
    def player():
        chunk = bytes(9600)  # 100 ms
        while True:
            stream.write(chunk)
    threading.Thread(target=player, daemon=True).start()
else:
    stream = pa.open(stream_callback=callback, **kw)
time.sleep(1.0)
c0, t0 = time.process_time(), time.monotonic()
time.sleep(seconds)
print(100 * (time.process_time() - c0) / (time.monotonic() - t0), flush=True)
os._exit(0)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="CPU window per run")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each mode")
    args = ap.parse_args()
    got: dict[str, list[float]] = {"fresh": [], "kept": [], "write": []}
    with tempfile.TemporaryDirectory(prefix="voiced-callback-bench-") as d:
        tmp = Path(d)
        (tmp / "mic.raw").write_bytes(bytes(96000))
        env = {**clock_device_env(tmp, tmp / "mic.raw"), "PYTHONPATH": str(REPO)}
        for r in range(args.rounds):
            modes = list(got)
            for mode in modes[r % 3:] + modes[:r % 3]:  # rotate who goes first
                p = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.seconds)],
                                   env=env, capture_output=True, text=True, check=True,
                                   timeout=args.seconds + 60)
                got[mode].append(float(p.stdout.strip().splitlines()[-1]))
                print(f"  {mode}: {got[mode][-1]:.3f} %", flush=True)
    for mode, runs in got.items():
        print(f"{mode}: {' '.join(f'{x:.3f}' for x in runs)} % of a core")


if __name__ == "__main__":
    main()
