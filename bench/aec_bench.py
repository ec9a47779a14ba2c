"""What the echo canceller costs and achieves, beside same-run baselines.

Run: ``.venv/bin/python bench/aec_bench.py [--seconds 30] [--compare]``.

- ERLE after convergence in the tests' synthetic room (tests/room.py: the reply spoken by
  espeak-ng through a seeded room response, direct path at 20/50/80 ms), with and
  without speex's residual echo suppressor.
- CPU per second of audio (process time, 20 ms blocks, the daemon's call pattern: the
  speaker's block handed over, then the mic block cleaned), beside two baselines run in
  the same process: a plain copy of each mic frame, and the canceller's own Python part
  with the C call replaced by a copy (ring, alignment, cost window).
- Memory: what importing the module and making one canceller add to a fresh process.
- A Pi Zero 2 W estimate: this machine's sysbench single-thread figure against a
  published one for the Zero 2 W's core (see ``PI``); an estimate, not a measurement.
- ``--compare``: the same room through WebRTC's AEC3 where a binding is importable
  (``livekit``, ``pywebrtc_audio``); install them into a scratch venv to run it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.room import (  # noqa: E402
    REPLY_TEXT,
    echo_of,
    erle_db,
    espeak,
    impulse_response,
    noise,
    to_pcm,
)
from voiced.audio.aec import EchoCanceller  # noqa: E402
from voiced.wire import SAMPLE_RATE  # noqa: E402

CONVERGED_S = 3.0

# The estimate's basis: sysbench 1.0.20 ``cpu --threads=1`` (primes to 10000), 687.45
# events/s on a Raspberry Pi 3B+ (Cortex-A53 at 1.4 GHz), as published at
# leoncode.co.uk/articles/raspberry-pi-benchmarks; the Zero 2 W has the same core at
# 1.0 GHz, so 687.45 / 1.4 (clock scaling, an assumption). Integer work: it likely
# flatters the Pi for float DSP, where this machine's vector units help more.
PI = {"name": "Pi Zero 2 W (Cortex-A53, 1 GHz)", "sysbench": 687.45 / 1.4}


def reply_room(seconds: float, delay_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(speaker int16, echo float, mic int16): the reply repeated to ``seconds``."""
    one = espeak(REPLY_TEXT)
    far = np.tile(one, int(np.ceil(seconds * SAMPLE_RATE / len(one))))
    far = far[:int(seconds * SAMPLE_RATE)]
    echo = echo_of(far, impulse_response(delay_ms, 0.5))
    return far, echo, to_pcm(echo + noise(len(far)))


def run(process: Callable[[bytes, int], bytes], played: Callable[[bytes, int], None],
        mic: np.ndarray, far: np.ndarray, frame: int) -> tuple[np.ndarray, float]:
    """Feed the whole recording as the daemon would; (output, process seconds)."""
    mic_b, far_b = mic.tobytes(), far.tobytes()
    fb = frame * 2
    out = []
    t = time.process_time()
    for i in range(0, len(mic_b) - fb + 1, fb):
        played(far_b[i:i + fb], i // 2)
        out.append(process(mic_b[i:i + fb], i // 2 + frame))
    cpu = time.process_time() - t
    return np.frombuffer(b"".join(out), "<i2"), cpu


def per_s(cpu: float, samples: int) -> float:
    """Microseconds of CPU per second of audio."""
    return cpu / (samples / SAMPLE_RATE) * 1e6


def cpu_figures(seconds: float) -> dict[str, float]:
    far, _echo, mic = reply_room(seconds, 50)
    n = len(mic)
    figures = {}
    _, cpu = run(lambda m, p: bytes(m), lambda f, p: None, mic, far, 480)
    figures["baseline: a plain copy of each 20 ms frame"] = per_s(cpu, n)
    shell = EchoCanceller()
    shell._aec.run = lambda m, r: bytes(m)  # type: ignore[method-assign]
    _, cpu = run(shell.process, shell.played, mic, far, 480)
    figures["baseline: the canceller's Python part, C call replaced by a copy"] = per_s(cpu, n)
    for label, kwargs in (("EchoCanceller() default: 20 ms, tail 200 ms, suppressor", {}),
                          ("  without the suppressor (linear filter only)",
                           {"suppress": False}),
                          ("  10 ms blocks", {"frame_ms": 10}),
                          ("  tail 300 ms", {"tail_ms": 300})):
        aec = EchoCanceller(**kwargs)  # type: ignore[arg-type]
        _, cpu = run(aec.process, aec.played, mic, far, aec.frame)
        figures[label] = per_s(cpu, n)
    return figures


def erle_figures(seconds: float) -> list[tuple[int, float, float, float]]:
    rows = []
    a = int(CONVERGED_S * SAMPLE_RATE)
    for delay in (20, 50, 80):
        far, echo, mic = reply_room(seconds, delay)
        full = EchoCanceller()
        out, _ = run(full.process, full.played, mic, far, 480)
        lin = EchoCanceller(suppress=False)
        out_lin, _ = run(lin.process, lin.played, mic, far, 480)
        per_second = [erle_db(echo[s:s + SAMPLE_RATE], out[s + full.delay:s + full.delay
                                                         + SAMPLE_RATE])
                      for s in range(0, len(out) - SAMPLE_RATE, SAMPLE_RATE)]
        converged = next((i + 1 for i, e in enumerate(per_second) if e >= 25), float("nan"))
        rows.append((delay, erle_db(echo[a:len(out)], out[a:]),
                     erle_db(echo[a:len(out_lin)], out_lin[a:]), converged))
    return rows


RSS_PRELUDE = """
import sys
sys.path.insert(0, {repo!r})
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
"""


def in_child(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter that has the repository and ``rss()`` (kB)."""
    code = RSS_PRELUDE.format(repo=str(REPO)) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, check=False)


MEMORY = """
import voiced.wire, voiced.audio.native  # loaded by the daemon anyway
base = rss()
from voiced.audio.aec import EchoCanceller, _lib
_lib()
imported = rss()
aec = EchoCanceller()
for i in range(100):
    aec.played(bytes(960), i * 480)
    aec.process(bytes(960), (i + 1) * 480)
made = rss()
more = [EchoCanceller() for _ in range(10)]
ten = rss()
print(base, imported, made, ten)
"""


def memory_kb() -> tuple[int, int, int]:
    out = in_child(MEMORY).stdout.split()
    base, imported, made, ten = map(int, out)
    return imported - base, made - imported, (ten - made) // 10


def sysbench() -> float | None:
    exe = shutil.which("sysbench")
    if exe is None:
        return None
    out = subprocess.run([exe, "cpu", "--threads=1", "--time=10", "run"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"events per second:\s*([\d.]+)", out)
    return float(m.group(1)) if m else None


COMPARE = """
import time
import numpy as np
from tests.room import echo_of, erle_db, espeak, impulse_response, noise, to_pcm, REPLY_TEXT
import soxr
R = 24000
base = rss()
which = sys.argv[1]
if which == "livekit":
    from livekit import rtc
    apm = rtc.AudioProcessingModule(echo_cancellation=True)
    def step(m, f):
        rev = rtc.AudioFrame(f.tobytes(), R, 1, len(f))
        apm.process_reverse_stream(rev)
        near = rtc.AudioFrame(m.tobytes(), R, 1, len(m))
        apm.set_stream_delay_ms(0)
        apm.process_stream(near)
        return np.frombuffer(bytes(near.data), np.int16)
    rate, frame = R, 240
else:
    from pywebrtc_audio import EchoCanceller
    ec = EchoCanceller(sample_rate=16000, num_channels=1, stream_delay_ms=0)
    step = lambda m, f: ec.process(m, f)
    rate, frame = 16000, 160  # 24 kHz is refused
made = rss()
for delay in (20, 50, 80):
    one = espeak(REPLY_TEXT)
    far = np.tile(one, 2)[:int({seconds} * R)]
    echo = echo_of(far, impulse_response(delay, 0.5))
    mic = to_pcm(echo + noise(len(far)))
    m, f = mic, far
    if rate != R:
        m, f = soxr.resample(mic, R, rate), soxr.resample(far, R, rate)
    out = []
    t = time.process_time()
    for i in range(0, len(m) - frame + 1, frame):
        out.append(step(m[i:i + frame], f[i:i + frame]))
    cpu = time.process_time() - t
    out = np.concatenate(out)
    if rate != R:
        out = soxr.resample(out, rate, R)
    a = 3 * R
    n = min(len(out), len(echo))
    print(f"{{which}} delay {{delay}} ms: ERLE {{erle_db(echo[a:n], out[a:n]):.1f}} dB, "
          f"{{cpu / (len(m) / rate) * 1e6:.0f}} us CPU per s of audio"
          + (" (16 kHz, resampling not counted)" if rate != R else ""))
print(f"{{which}}: import + one instance add {{(made - base) / 1024:.1f}} MB of RSS "
      f"(numpy already loaded: {{base / 1024:.1f}} MB before)")
"""


def compare(seconds: float) -> None:
    for which, module in (("livekit", "livekit"), ("pywebrtc_audio", "pywebrtc_audio")):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"],
                               capture_output=True, check=False)
        if probe.returncode:
            print(f"  {which}: not installed in this interpreter (compare skipped)")
            continue
        p = in_child(COMPARE.format(seconds=seconds), which)
        print(textwrap.indent(p.stdout.strip() or p.stderr[-2000:], "  "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="audio per CPU figure")
    ap.add_argument("--compare", action="store_true",
                    help="also run WebRTC AEC3 bindings where importable")
    args = ap.parse_args()

    print(f"ERLE after {CONVERGED_S:.0f} s, synthetic room, gain 0.5 ({args.seconds:.0f} s):")
    for delay, erle, erle_lin, conv in erle_figures(min(args.seconds, 20)):
        print(f"  direct path at {delay} ms: {erle:.1f} dB with the suppressor, "
              f"{erle_lin:.1f} dB linear filter alone; first second at >= 25 dB: "
              f"second {conv}")
    print(f"\nCPU per second of audio ({args.seconds:.0f} s of audio each, process time):")
    figures = cpu_figures(args.seconds)
    for label, us in figures.items():
        print(f"  {label:<66} {us:8.0f} us  ({us / 1e4:.2f} % of a core)")
    imported, made, each = memory_kb()
    print(f"\nMemory (fresh process): the module and libspeexdsp {imported} kB, the first "
          f"canceller and 2 s of audio {made} kB, each further canceller {each} kB")
    mine = sysbench()
    default = figures["EchoCanceller() default: 20 ms, tail 200 ms, suppressor"]
    if mine is None:
        print("\nPi Zero 2 W estimate: sysbench is not installed (apt install sysbench)")
    else:
        ratio = mine / PI["sysbench"]
        print(f"\nPi Zero 2 W ESTIMATE: sysbench cpu here {mine:.0f} events/s, "
              f"{PI['name']} {PI['sysbench']:.0f} (published Pi 3B+ figure scaled by "
              f"clock): {ratio:.1f}x slower per core, so the default canceller would "
              f"cost about {default * ratio / 1e4:.1f} % of one of its four cores "
              f"({default * ratio / 1000:.1f} ms per s; float DSP may fare worse)")
    if args.compare:
        print("\nWebRTC AEC3, the same room:")
        compare(min(args.seconds, 20))


if __name__ == "__main__":
    main()
