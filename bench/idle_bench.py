"""Idle, wake-up and reply-start benchmark (issue 21): prints figures beside same-run
baselines, on the timer-clocked ALSA device and on the PulseAudio stand-in.

Run: ``.venv/bin/python bench/idle_bench.py [--seconds 60] [--rounds 20]`` (the stand-ins
of ``bench/audio_bench.py``: gcc, libasound2-dev, pulseaudio). Per device it measures,
interleaved so that the busy machine's load falls on figure and baseline alike:

1. idle: ``voiced run`` connected to the simulator, in ``ready`` (mic off, nothing
   playing) for ``--seconds``: CPU % of one core. Beside it: the same daemon with the mic
   kept open while idle (``Supervisor.keep_mic_open``, what a wake word needs), and the
   baseline of a process that only holds the two PortAudio streams open (what an
   always-open daemon cannot go below).
2. active: the daemon with the mic on and speech fed in (full duplex), beside the floor
   of a Python process that sends appends (a thread handing 20 ms frames of silence to
   asyncio, sent as JSON appends, no audio device), same length. The naive client, with
   a real mic and speaker, is ``bench/active_bench.py``'s baseline.
3. wake-up: a press on the control socket to the first ``input_audio_buffer.append`` the
   simulator receives (both on CLOCK_MONOTONIC), ``--rounds`` presses each after the
   daemon has idled; p50 and p95.
4. reply starts: a reply of 3 s arriving at exactly real-time pace in 100 ms chunks into
   ``PyAudioSink`` (after it idled), ``--rounds`` replies: gaps (the speaker ran dry
   before the reply's end) and the start latency (first chunk to its first sample handed
   to PortAudio); beside it the same with the start margin off (the jitter buffer as
   it was: playback begins as soon as 80 ms are queued).

``--grace S [--pause P]``: only 4, at the speaker's idle grace as configured by default
(``audio.speaker_idle_s``) and at ``S`` seconds, interleaved in four batches, each reply
``P`` s (3) after the last one's end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from audio_bench import (  # noqa: E402
    Stand,
    bench_daemon,
    bench_idle_streams,
    bench_minimal_pipeline,
    clock_stand,
    cpu_seconds,
    free_port,
    make_feed,
    pulse_stand,
)

from tests.pulse import Pulse  # noqa: E402
from voiced.config import AudioSettings  # noqa: E402
from voiced.control import request  # noqa: E402

# the simulator, noting when each burst of appends begins (the first after a pause)
SIM = """
import sys, time
from voiced.sim import conversation
from voiced.__main__ import main
orig = conversation.SimSession.on_append
last = [0.0]
async def on_append(self, ev):
    now = time.monotonic()
    if now - last[0] > 0.3:
        print(f"burst {now!r}", flush=True)
    last[0] = now
    await orig(self, ev)
conversation.SimSession.on_append = on_append
conversation._HANDLERS["input_audio_buffer.append"] = on_append
sys.exit(main(["sim", "--port", sys.argv[1]]))
"""

# voiced run, optionally with the mic kept open while idle (the wake word's hook)
RUN = """
import sys
from voiced.supervisor import daemon
from voiced.__main__ import main
if sys.argv[2] == "1":
    init = daemon.Supervisor.__init__
    def keep(self, *a, **k):
        init(self, *a, **k)
        self.keep_mic_open = True
    daemon.Supervisor.__init__ = keep
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


class Daemon:
    """The simulator and ``voiced run`` on ``stand``, until closed."""

    def __init__(self, stand: Stand, tmp: Path, *, keep_mic_open: bool = False,
                 ready: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(dir=tmp))
        port = free_port()
        self.cfg = self.dir / "voiced.yaml"
        env = stand.env
        # ready: the orb's pattern in ready, on one PWM LED (gpiozero's mock pins: the
        # daemon's share of an animation; a real pin adds its own write cost)
        leds = {} if ready is None else {"leds": {
            "driver": "gpio", "kind": "pwm", "pins": ["18"],
            "patterns": {"ready": {"effect": ready, "color": [0, 0, 40], "period_s": 2.0}}}}
        if ready is not None:
            env = {**env, "GPIOZERO_PIN_FACTORY": "mock",
                   "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin"}
        self.cfg.write_text(json.dumps({**leds,
            "device_id": "bench", "log_level": "warning",
            "realtime": {"url": f"ws://127.0.0.1:{port}/v1/realtime"},
            # the default echo policy (auto: aec where libspeexdsp loads): idle at zero
            # must hold with it (the speaker idles while the mic is off)
            "audio": {"backend": "pyaudio",
                      "input": {"device": stand.device, "rate_hz": 48000},
                      "output": {"device": stand.device}},
            "transcripts": {"sink": "jsonl", "jsonl": {"path": str(self.dir / "t.jsonl")},
                            "outbox_dir": str(self.dir / "outbox")},
            "control": {"socket": str(self.dir / "ctl.sock")}}))
        self.sim = subprocess.Popen([sys.executable, "-c", SIM, str(port)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
        with (self.dir / "daemon.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", RUN, str(self.cfg), "1" if keep_mic_open else "0"],
                env=env, stderr=log)
        deadline = time.monotonic() + 30
        while self.status().get("state") != "ready":
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"the daemon never became ready:\n"
                                 f"{(self.dir / 'daemon.log').read_text()[-3000:]}")
            time.sleep(0.2)

    def status(self) -> dict[str, Any]:
        try:
            return dict(request(self.dir / "ctl.sock", "status")["status"])
        except (OSError, ValueError):
            return {}

    def cpu(self, seconds: float) -> float:
        c0, t0 = cpu_seconds(self.proc.pid), time.monotonic()
        time.sleep(seconds)
        return 100 * (cpu_seconds(self.proc.pid) - c0) / (time.monotonic() - t0)

    def wake_ups(self, rounds: int, idle_s: float) -> list[float]:
        """Press → first append at the simulator; press again (mic off), idle, repeat."""
        assert self.sim.stdout is not None
        out = []
        for _ in range(rounds):
            time.sleep(idle_s)
            t0 = time.monotonic()
            request(self.dir / "ctl.sock", "press")
            line = ""
            while not line.startswith("burst "):  # the simulator prints each burst
                line = self.sim.stdout.readline()
                if not line:
                    raise SystemExit("the simulator ended")
            out.append(float(line.split()[1]) - t0)
            time.sleep(0.3)
            request(self.dir / "ctl.sock", "press")
        return out

    def close(self) -> None:
        for p in (self.proc, self.sim):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


REPLIES = """
import asyncio, inspect, json, sys, time
from voiced.audio.pyaudio_backend import PyAudioSink
from voiced.config import AudioEndpointSettings, AudioSettings

async def main(device, rounds, margin, idle, pause):
    kw = {"period_ms": AudioSettings().period_ms}  # the daemon's speaker period
    if margin != "default" and "start_margin_ms" in inspect.signature(PyAudioSink).parameters:
        kw["start_margin_ms"] = int(margin)
    kw["idle_s"] = AudioSettings().speaker_idle_s if idle == "default" else float(idle)
    sink = PyAudioSink(AudioEndpointSettings(device=device), **kw)
    drains = []
    sink.set_drained_callback(lambda: drains.append(time.monotonic()))
    await sink.start()
    chunk = b"".join(  # 100 ms at 24 kHz, never silent
        int(1000 + (i % 50)).to_bytes(2, "little", signed=True)
                     for i in range(2400))
    gaps = []
    for r in range(rounds):
        await asyncio.sleep(pause)  # 3 s: long enough for the speaker to idle
        drains.clear()
        due = time.monotonic()
        for k in range(30):  # 3 s, exactly real time
            sink.play(chunk, f"item_{r}")
            due += 0.1
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        end = due
        deadline = time.monotonic() + 5
        while not drains or drains[-1] < end:
            await asyncio.sleep(0.02)
            if time.monotonic() > deadline:
                break
        gaps.append(sum(1 for d in drains if d < end))
    await sink.aclose()
    print(json.dumps({"gaps": gaps, "latency": list(sink.start_latencies)}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4],
                 float(sys.argv[5])))
"""


def bench_replies(stand: Stand, rounds: int, margin: str, idle: str = "default",
                  pause: float = 3.0) -> dict[str, Any]:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(REPLIES), stand.device,
                        str(rounds), margin, idle, str(pause)], env=stand.env,
                       capture_output=True, text=True, timeout=rounds * 10 + 60, check=False)
    if p.returncode != 0:
        raise SystemExit(f"reply measurement failed:\n{p.stderr[-3000:]}")
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def idle_cpu(stand: Stand, tmp: Path, seconds: float, **kw: Any) -> float:
    """A daemon's CPU in ready (``kw``: keep_mic_open, ready pattern)."""
    d = Daemon(stand, tmp, **kw)
    try:
        time.sleep(2.0)
        return d.cpu(seconds)
    finally:
        d.close()


def measure_orb(name: str, stand: Stand, tmp: Path, seconds: float,
                rounds: int) -> list[tuple[str, str, str]]:
    """The ready pattern's cost: solid (the default) and pulse, interleaved ``rounds``
    times on the same device."""
    solid, pulse = [], []
    for _ in range(rounds):
        solid.append(idle_cpu(stand, tmp, seconds, ready="solid"))
        pulse.append(idle_cpu(stand, tmp, seconds, ready="pulse"))
    return [(f"{name}: idle CPU, ready orb pulsing",
             f"{np.median(pulse):.2f} % (median)",
             f"{rounds} interleaved runs of {seconds:.0f} s, one PWM LED (mock pin) at 30 fps: "
             f"pulse {' '.join(f'{x:.2f}' for x in pulse)}; solid (default) "
             f"{' '.join(f'{x:.2f}' for x in solid)}")]


def measure_grace(name: str, stand: Stand, grace: float, rounds: int,
                  pause: float) -> list[tuple[str, str, str]]:
    """Reply starts with the speaker's idle grace at the default and at ``grace``,
    interleaved in 4 batches of ``rounds // 4`` replies, each ``pause`` s after the last
    one drained (3 s: the stream stopped before each at either grace; between the two
    graces: it runs on at the longer one and restarts at the shorter)."""
    got: dict[str, dict[str, list[Any]]] = {k: {"gaps": [], "latency": []}
                                            for k in ("default", str(grace))}
    for _ in range(4):
        for idle in got:
            rep = bench_replies(stand, max(1, rounds // 4), "default", idle, pause)
            for k, v in got[idle].items():
                v += rep[k]
    out = []
    for idle, rep in got.items():
        label = (f"{AudioSettings().speaker_idle_s:g} s (default)" if idle == "default"
                 else f"{float(idle):g} s")
        out.append((f"{name}: reply starts {pause:g} s apart, speaker idle grace {label}",
                    f"{sum(rep['gaps'])} gaps in {len(rep['gaps'])} replies",
                    f"start latency p50 {pct(rep['latency'], 50):.0f} ms, p95 "
                    f"{pct(rep['latency'], 95):.0f} ms, max {pct(rep['latency'], 100):.0f} ms"))
    return out


def measure(name: str, stand: Stand, active_stand: Stand, tmp: Path, seconds: float,
            rounds: int) -> list[tuple[str, str, str]]:
    d = Daemon(stand, tmp)
    try:
        time.sleep(2.0)
        idle = d.cpu(seconds)
        wake = d.wake_ups(rounds, idle_s=3.0)
    finally:
        d.close()
    bare = bench_idle_streams(stand, seconds)
    k = Daemon(stand, tmp, keep_mic_open=True)
    try:
        time.sleep(2.0)
        kept = k.cpu(seconds)
    finally:
        k.close()
    active = bench_daemon(active_stand, tmp, seconds)
    naive = bench_minimal_pipeline(seconds)
    single = bench_daemon(active_stand, tmp, seconds, block_ms=20)  # one frame per wakeup
    rep = bench_replies(stand, rounds, "default")
    old = bench_replies(stand, rounds, "0")
    return [
        (f"{name}: idle CPU in ready", f"{idle:.2f} %",
         f"over {seconds:.0f} s; mic kept open (wake word): {kept:.2f} %; baseline, two "
         f"bare PortAudio streams held open: {bare:.2f} %"),
        (f"{name}: active CPU, full duplex", f"{active['cpu_pct']:.2f} %",
         f"over {active['seconds']:.0f} s, {active['audio_sent_s']:.0f} s of mic audio "
         f"sent; floor, a device-less Python uplink (not the naive client: "
         f"bench/active_bench.py): {naive:.2f} %; block_ms 20 (one frame a "
         f"wakeup, as before): {single['cpu_pct']:.2f} %"),
        (f"{name}: press to first mic frame",
         f"p50 {pct(wake, 50):.0f} ms, p95 {pct(wake, 95):.0f} ms",
         f"{len(wake)} presses, each after 3 s idle; max {pct(wake, 100):.0f} ms"),
        (f"{name}: reply-start gaps", f"{sum(rep['gaps'])} in {len(rep['gaps'])} replies",
         f"latency p50 {pct(rep['latency'], 50):.0f} ms, p95 {pct(rep['latency'], 95):.0f} ms; "
         f"baseline, no start margin: {sum(old['gaps'])} gaps, latency p50 "
         f"{pct(old['latency'], 50):.0f} ms, p95 {pct(old['latency'], 95):.0f} ms"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="CPU window per figure")
    ap.add_argument("--rounds", type=int, default=20, help="presses and replies per device")
    ap.add_argument("--only", choices=("clock", "pulse"), help="one device")
    ap.add_argument("--orb", type=int, default=0, metavar="N",
                    help="only the ready orb's cost: N interleaved runs, solid and pulse")
    ap.add_argument("--grace", type=float, metavar="S",
                    help="only reply starts with the speaker's idle grace at the default and "
                         "at S seconds, interleaved")
    ap.add_argument("--pause", type=float, default=3.0,
                    help="with --grace: seconds from a reply's end to the next")
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="voiced-idle-bench-") as d:
        tmp = Path(d)
        feed_wav, feed_raw = make_feed(tmp)
        silence = tmp / "silence.raw"
        silence.write_bytes(bytes(48000 * 2))
        for sub in ("c0", "c1"):
            (tmp / sub).mkdir()
        if args.orb:
            rows += measure_orb("clock", clock_stand(tmp / "c0", silence), tmp, args.seconds,
                                args.orb)
            args.only = "none"
        if args.only in (None, "clock"):
            # a silent mic for idle and wake-up (no turn starts), the speech feed for active
            quiet = clock_stand(tmp / "c0", silence)
            rows += (measure_grace("clock", quiet, args.grace, args.rounds, args.pause)
                     if args.grace is not None else
                     measure("clock", quiet, clock_stand(tmp / "c1", feed_raw), tmp,
                             args.seconds, args.rounds))
        if args.only in (None, "pulse"):
            pulse = Pulse(tmp / "pulse")
            pulse.start()
            try:
                pulse.add_sink("mic48", 48000)
                stand = pulse_stand(pulse, feed_wav)
                quiet = Stand(stand.env, stand.device)  # no feeder: the mic hears silence
                rows += (measure_grace("pulse", quiet, args.grace, args.rounds, args.pause)
                         if args.grace is not None else
                         measure("pulse", quiet, stand, tmp, args.seconds, args.rounds))
            finally:
                pulse.stop()
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<24}  {note}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
