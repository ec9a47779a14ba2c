"""Audio engine benchmark: prints figures, and the same figures for a naive baseline.

Run: ``.venv/bin/python bench/audio_bench.py [--seconds 60]`` (needs gcc, libasound2-dev
and pulseaudio, as ``scripts/setup.sh test`` installs). The machine has no sound card, so
two things stand in for one:

- a timer-clocked ALSA device (``bench/alsa_clock/pcm_clock.c``, built here): one poll
  wakeup per period and a copy, as a card costs its client; its mic loops speech;
- a private PulseAudio server with a 48 kHz "microphone" (a null sink whose monitor the
  daemon records, fed speech by ``paplay``) and a 24 kHz "speaker", reached through
  ALSA's pulse plugin. Only here can a test hear what was played, so the latency and
  barge-in figures come from it.

It measures:

1. ``voiced run`` (a subprocess) in full duplex against the simulator for ``--seconds`` on
   the clocked device: CPU % of one core (and per thread) and peak RSS, with ALSA
   configured as on a device (no libasound2-plugins set); then shorter runs with 40 ms and
   with 100 ms mic frames and speaker periods, on the PulseAudio stand-in, and on it with
   this machine's full ALSA configuration. Baselines in the same run: a process that only
   holds the same two PortAudio streams open (on each stand-in), a minimal Python
   mic uplink (a thread handing 20 ms frames to asyncio, sent over websockets), a bare
   interpreter importing what ``voiced run`` imports (and the same with numpy and
   python-soxr, as the daemon did before), and what PortAudio's start-up adds with this
   machine's ALSA plugins and with only the pulse plugin.
2. Capture conversion (48 kHz stereo USB-mic chunks to 24 kHz mono): libsoxr's streaming
   resampler against naive per-chunk linear resampling: CPU per second of audio and the
   largest error against a one-shot resample of the whole signal (seams at chunk borders).
3. Mic to socket: from the PortAudio callback that completes a frame to the frame leaving
   the event loop's queue, plus the JSON/base64 encoding of the append event.
4. Socket to device: from ``play()`` of a reply's first delta to its first sample handed
   to PortAudio, with the default 80 ms jitter buffer and with none.
5. Barge-in: played position reported by ``stop()`` against the tone that really reached
   the sink (truncation error), and how long the speaker keeps sounding after ``stop()``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.clock_device import clock_device_env  # noqa: E402
from tests.pulse import Pulse  # noqa: E402
from voiced.audio.convert import QUALITY, ToWire  # noqa: E402
from voiced.config import AudioSettings  # noqa: E402
from voiced.control import request  # noqa: E402
from voiced.wire import SAMPLE_RATE  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (voiced names its threads; libpulse's are threaded-ml)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if task.name == str(pid):
            name = "event loop"
        elif name.startswith("python") or name == "voiced":  # unnamed: the loop's name
            name = "other"
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def anon_mb(pid: int) -> float:
    """Anonymous memory (heap, stacks, buffers): what the daemon really costs the device.
    RSS also counts library pages read from disk, which the kernel can drop and reload."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------- 1. the daemon


IDLE_STREAMS = """
import os, sys, time, pyaudio
pa = pyaudio.PyAudio()
dev = next(i for i in range(pa.get_device_count())
           if pa.get_device_info_by_index(i)["name"] == sys.argv[3])
def mic(data, n, t, s): return (None, pyaudio.paContinue)
def speaker(data, n, t, s): return (bytes(2 * n), pyaudio.paContinue)
streams = [  # kept referenced: a collected stream's callback would crash
    pa.open(format=pyaudio.paInt16, channels=1, rate=48000, input=True,
            frames_per_buffer=960, input_device_index=dev, stream_callback=mic),
    pa.open(format=pyaudio.paInt16, channels=1, rate=24000, output=True,
            frames_per_buffer=int(sys.argv[2]), output_device_index=dev,
            stream_callback=speaker)]
time.sleep(2)
t0 = os.times()
time.sleep(float(sys.argv[1]))
t1 = os.times()
print(100 * (t1.user + t1.system - t0.user - t0.system) / float(sys.argv[1]))
for st in streams:  # close before exit: a callback running at shutdown crashes
    st.stop_stream()
    st.close()
pa.terminate()
"""


def bench_idle_streams(stand: Stand, seconds: float) -> float:
    """The baseline: CPU of a process that only keeps the same two PortAudio streams open."""
    period = SAMPLE_RATE * AudioSettings().period_ms // 1000  # the daemon's speaker period
    p = subprocess.run([sys.executable, "-c", IDLE_STREAMS, str(seconds), str(period),
                        stand.device], env=stand.env, capture_output=True, text=True,
                       timeout=seconds + 60, check=True)
    return float(p.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Stand:
    """What stands in for the sound card: the environment that makes PortAudio see it, its
    device name, and the command (if any) that keeps playing the feed into its mic."""

    env: dict[str, str]
    device: str
    feeder: list[str] | None = None


def make_feed(tmp: Path) -> tuple[Path, Path]:
    """The mic's input: the question then 4 s of silence at 48 kHz, as WAV and raw."""
    with wave.open(str(REPO / "voiced" / "data" / "question.wav"), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        rate = w.getframerate()
    up = soxr.resample(pcm, rate, 48000).astype("<i2")
    audio = np.concatenate([up, np.zeros(48000 * 4, "<i2")]).tobytes()
    (tmp / "feed.raw").write_bytes(audio)
    with wave.open(str(tmp / "feed.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(audio)
    return tmp / "feed.wav", tmp / "feed.raw"


def pulse_stand(pulse: Pulse, feed_wav: Path, machine_alsa: bool = False) -> Stand:
    """The PulseAudio stand-in: null sinks reached through ALSA's pulse plugin; ALSA as on a
    device (only that plugin), or with ``machine_alsa`` this machine's whole plugin set."""
    env = pulse.env(machine_alsa=machine_alsa, PULSE_SOURCE="mic48.monitor",
                    PULSE_SINK="null24")
    return Stand(env, "pulse",
                 ["sh", "-c", f"while :; do paplay --device=mic48 {feed_wav}; done"])


def clock_stand(tmp: Path, feed_raw: Path) -> Stand:
    """A timer-clocked ALSA PCM (bench/alsa_clock): what a card costs its client, one
    wakeup per period, and no sound server in the process. Its mic loops ``feed_raw``."""
    try:
        return Stand(clock_device_env(tmp, feed_raw), "clock")
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"cannot build the clocked ALSA device (gcc, libasound2-dev):\n"
                         f"{e.stderr[-2000:]}") from None


def wait_ready(sock: Path, log: Path, timeout: float = 60.0) -> None:
    """Until the daemon's status says ``ready`` (on a busy machine start-up takes longer
    than any fixed wait)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if request(sock, "status")["status"].get("state") == "ready":
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon never became ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def bench_daemon(stand: Stand, tmp: Path, seconds: float, src: Path | None = None,
                 **audio: Any) -> dict[str, Any]:
    """Run the daemon on ``stand``; ``audio`` adds keys to the config's ``audio`` section;
    ``src``: run the voiced package found there (another commit's tree, for before/after
    figures in one run) instead of this one."""
    tmp = Path(tempfile.mkdtemp(dir=tmp))
    port = free_port()
    cfg = tmp / "voiced.yaml"
    cfg.write_text(json.dumps({
        "device_id": "bench", "log_level": "warning",
        "realtime": {"url": f"ws://127.0.0.1:{port}/v1/realtime"},
        "audio": {"backend": "pyaudio", "echo": "full_duplex",
                  "input": {"device": stand.device, "rate_hz": 48000},
                  "output": {"device": stand.device}, **audio},
        "transcripts": {"sink": "jsonl", "jsonl": {"path": str(tmp / "t.jsonl")},
                        "outbox_dir": str(tmp / "outbox")},
        "control": {"socket": str(tmp / "ctl.sock")}}))
    env = stand.env if src is None else {**stand.env, "PYTHONPATH": str(src)}
    voiced = [sys.executable, "-m", "voiced"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([*voiced, "sim", "--port", str(port)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with (tmp / "daemon.log").open("wb") as log:
            daemon = subprocess.Popen([*voiced, "run", "-c", str(cfg)], env=env, stderr=log,
                                      cwd=src)
        procs.append(daemon)
        wait_ready(tmp / "ctl.sock", tmp / "daemon.log")  # start-up and connect
        subprocess.run([*voiced, "ctl", "-c", str(cfg), "press"], env=env, check=True,
                       capture_output=True, timeout=20)
        if stand.feeder is not None:
            procs.append(subprocess.Popen(stand.feeder, env=env))
        time.sleep(2.0)
        c0, t0, th0 = cpu_seconds(daemon.pid), time.monotonic(), thread_cpu(daemon.pid)
        if os.environ.get("BENCH_PROFILE"):  # where the daemon's CPU goes (py-spy)
            subprocess.run(["py-spy", "record", "-p", str(daemon.pid), "-d", str(int(seconds)),
                            "-f", "raw", "-o", os.environ["BENCH_PROFILE"], "--threads",
                            "--native"], check=False, timeout=seconds + 30)
        else:
            time.sleep(seconds)
        c1, t1, th1 = cpu_seconds(daemon.pid), time.monotonic(), thread_cpu(daemon.pid)
        rss = peak_rss_mb(daemon.pid)
        anon = anon_mb(daemon.pid)
        if os.environ.get("BENCH_SMAPS"):  # where the daemon's memory goes
            Path(os.environ["BENCH_SMAPS"]).write_text(
                Path(f"/proc/{daemon.pid}/smaps").read_text())
        status = json.loads(subprocess.run(
            [*voiced, "ctl", "-c", str(cfg), "status"], env=env, check=True,
            capture_output=True, text=True, timeout=20).stdout)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    records = (tmp / "t.jsonl").read_text().splitlines() if (tmp / "t.jsonl").exists() else []
    threads = {k: 100 * (v - th0.get(k, 0.0)) / (t1 - t0) for k, v in th1.items()}
    return {"cpu_pct": 100 * (c1 - c0) / (t1 - t0), "rss_mb": rss, "threads": threads,
            "anon_mb": anon, "seconds": t1 - t0,
            "audio_sent_s": status["audio_sent_ms"] / 1000, "records": len(records),
            "underruns": status.get("playback_underruns")}


MINIMAL_PIPELINE = """
import asyncio, base64, json, os, sys, threading, time
from websockets.asyncio.client import connect

async def main(port, seconds):
    loop = asyncio.get_running_loop()
    frames, waiter, stop = [], [None], threading.Event()
    def deliver(frame):  # on the loop, like the mic's hand-over
        frames.append(frame)
        if waiter[0] is not None and not waiter[0].done():
            waiter[0].set_result(None)
    def mic():  # a thread that has a 20 ms frame every 20 ms, like PortAudio's
        due = time.monotonic()
        while not stop.is_set():
            due += 0.02
            time.sleep(max(0.0, due - time.monotonic()))
            loop.call_soon_threadsafe(deliver, bytes(960))
    async with connect(f"ws://127.0.0.1:{port}") as ws:
        async def pump():
            n = 0
            while True:
                while not frames:
                    waiter[0] = loop.create_future()
                    await waiter[0]
                n += 1
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "event_id": f"e{n}", "audio":
                                          base64.b64encode(frames.pop(0)).decode()}))
        task = asyncio.create_task(pump())
        threading.Thread(target=mic, daemon=True).start()
        await asyncio.sleep(2)
        t0 = os.times()
        await asyncio.sleep(seconds)
        t1 = os.times()
        stop.set()
        task.cancel()
    print(100 * (t1.user + t1.system - t0.user - t0.system) / seconds)

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""

SINK_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve
async def drain(ws):
    async for _ in ws:
        pass
async def main():
    async with serve(drain, "127.0.0.1", int(sys.argv[1]), max_size=None):
        print("ready", flush=True)
        await asyncio.Future()
asyncio.run(main())
"""


def bench_minimal_pipeline(seconds: float) -> float:
    """The least a Python process does for a mic: CPU % for 20 ms frames handed from a
    thread to asyncio and sent as JSON appends over websockets (no audio device; the
    server that receives them is another process)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SINK_SERVER, str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "ready"
        p = subprocess.run([sys.executable, "-c", MINIMAL_PIPELINE, str(port), str(seconds)],
                           capture_output=True, text=True, timeout=seconds + 60, check=True)
    finally:
        server.terminate()
        server.wait(20)
    return float(p.stdout.strip().splitlines()[-1])


PORTAUDIO_RSS = """
import os, re, sys, pyaudio
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
before = rss()
pa = pyaudio.PyAudio()  # enumerates, and so loads, every ALSA PCM plugin configured
dev = next(i for i in range(pa.get_device_count())
           if pa.get_device_info_by_index(i)["name"] == "pulse")
st = pa.open(format=pyaudio.paInt16, channels=1, rate=24000, output=True,
             output_device_index=dev)
print(rss() - before)
st.close()
pa.terminate()
"""


def bare_import_rss(extra: str = "") -> float:
    """Peak RSS of an interpreter that only imports what ``voiced run`` imports."""
    code = ("import voiced.__main__, voiced.supervisor.daemon, voiced.audio.pyaudio_backend, os, re"
            f"{extra}; s = open(f'/proc/{{os.getpid()}}/status').read(); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', s).group(1)) / 1024)")
    p = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       text=True, timeout=60)
    return float(p.stdout)


def bench_portaudio_rss(pulse: Pulse) -> dict[str, float]:
    """RSS PortAudio adds (init + one stream), with this machine's ALSA plugins and with
    only the pulse plugin (as on a device)."""
    out = {}
    for name in ("machine", "pulse only"):
        p = subprocess.run([sys.executable, "-c", PORTAUDIO_RSS],
                           env=pulse.env(machine_alsa=name == "machine"),
                           capture_output=True, text=True, timeout=60, check=True)
        out[name] = float(p.stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------- 2. capture conversion


def naive_to_wire(chunk: np.ndarray, rate: int) -> np.ndarray:
    """The baseline: average the channels, then linear-resample each chunk on its own."""
    mono = chunk.reshape(-1, 2).mean(axis=1)
    n_out = int(round(len(mono) * 24000 / rate))
    x = np.linspace(0, len(mono) - 1, n_out)
    out: np.ndarray = np.interp(x, np.arange(len(mono)), mono).astype("<i2")
    return out


def bench_conversion(seconds: float = 60.0) -> dict[str, Any]:
    rate, chunk = 48000, 960  # 20 ms callbacks, as the PyAudio source opens them (frame_ms)
    t = np.arange(int(rate * seconds)) / rate
    mono = (0.5 * np.sin(2 * np.pi * (200 + 40 * t) * t) * 32767).astype("<i2")
    stereo = np.repeat(mono, 2)
    want = soxr.resample(mono, rate, 24000, quality=QUALITY).astype(np.float64)
    out: dict[str, Any] = {}
    for name in ("soxr stream", "naive"):
        conv = ToWire(rate, 2)
        pieces = []
        c0 = time.process_time()
        for i in range(0, len(stereo), chunk * 2):
            part = stereo[i:i + chunk * 2]
            pieces.append(np.frombuffer(conv.convert(part.tobytes()), "<i2")
                          if name == "soxr stream" else naive_to_wire(part, rate))
        cpu = time.process_time() - c0
        got = np.concatenate(pieces).astype(np.float64)
        n = min(len(got), len(want)) - 2000
        lags = range(0, 200)
        err = min(float(np.max(np.abs(got[1000:n] - want[1000 - k:n - k]))) for k in lags)
        out[name] = {"cpu_us_per_s": cpu / seconds * 1e6, "max_err": err}
    return out


# ------------------------------------------------- 3-5. latency and barge-in, PortAudio

PORTAUDIO = """
import asyncio, base64, json, time
import numpy as np
from voiced.audio import pyaudio_source
from voiced.audio.pyaudio_backend import PyAudioSink, PyAudioSource
from voiced.config import AudioEndpointSettings

completed = []  # monotonic time at which the callback completed each frame
class TimedFramer(pyaudio_source.Framer):
    def push(self, data):
        frames = super().push(data)
        now = time.monotonic()
        completed.extend([now] * len(frames))
        return frames
pyaudio_source.Framer = TimedFramer

async def mic_to_socket(n=250):
    mic = PyAudioSource(AudioEndpointSettings(device="pulse", rate_hz=48000))
    await mic.start()
    hops, encode = [], []
    for i in range(n):
        frame = await mic.read()
        got = time.monotonic()
        hops.append(got - completed[i])
        e0 = time.perf_counter()
        json.dumps({"type": "input_audio_buffer.append", "event_id": "evt_%d" % i,
                    "audio": base64.b64encode(frame).decode()})
        encode.append(time.perf_counter() - e0)
    await mic.aclose()
    return hops[25:], encode[25:]

async def start_latency(jitter_ms, n=8):
    sink = PyAudioSink(AudioEndpointSettings(device="pulse"), jitter_ms=jitter_ms)
    drained = asyncio.Event()
    sink.set_drained_callback(drained.set)
    await sink.start()
    for i in range(n):
        drained.clear()
        for k in range(10):  # a reply arriving in real time as 40 ms deltas
            sink.play(np.full(960, 1000, "<i2").tobytes(), "item_%d" % i)
            await asyncio.sleep(0.04)
        await asyncio.wait_for(drained.wait(), 10)
    await sink.aclose()
    return list(sink.start_latencies)

async def barge_in(n=8):
    mic = PyAudioSource(AudioEndpointSettings(device="pulse"))
    sink = PyAudioSink(AudioEndpointSettings(device="pulse"))
    await mic.start()
    await sink.start()
    t = np.arange(24000 * 3)
    tone = (3000 + 2000 * np.sin(2 * np.pi * 440 * t / 24000)).astype("<i2").tobytes()
    errors, tails = [], []
    for i in range(n):
        heard = []
        async def record():
            while True:
                heard.append((time.monotonic(), await mic.read()))
        task = asyncio.create_task(record())
        await asyncio.sleep(0.2)
        sink.play(tone, "item_%d" % i)
        await asyncio.sleep(0.5 + 0.07 * i)  # stop at varying points of the reply
        t_stop = time.monotonic()
        played = sink.stop().get("item_%d" % i, 0)
        await asyncio.sleep(0.4)
        task.cancel()
        a = np.frombuffer(b"".join(f for _, f in heard), "<i2")
        nz = np.nonzero(a)[0]
        errors.append((int(nz[-1] - nz[0] + 1) - played) / 24)  # ms
        last = max(t for t, f in heard if any(f))
        tails.append(last - t_stop)
    await mic.aclose()
    await sink.aclose()
    return errors, tails, sink._latency_frames / sink.rate

async def main():
    hops, encode = await mic_to_socket()
    lat80 = await start_latency(80)
    lat0 = await start_latency(0)
    errors, tails, out_latency = await barge_in()
    print(json.dumps({"hops": hops, "encode": encode, "lat80": lat80, "lat0": lat0,
                      "errors": errors, "tails": tails, "out_latency": out_latency}))
asyncio.run(main())
"""


def bench_portaudio(pulse: Pulse) -> dict[str, Any]:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(PORTAUDIO)], env=pulse.env(),
                       capture_output=True, text=True, timeout=300, check=False)
    if p.returncode != 0:
        raise SystemExit(f"PortAudio measurements failed:\n{p.stderr[-3000:]}")
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------- report


def ms(xs: list[float]) -> str:
    a = np.asarray(xs) * 1000
    return f"median {np.median(a):.2f} ms, p95 {np.percentile(a, 95):.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="daemon run length")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="voiced-bench-") as d:
        tmp = Path(d)
        conv = bench_conversion()
        feed_wav, feed_raw = make_feed(tmp)
        # the headline: a timer-clocked ALSA device, which costs what a card costs
        clock = clock_stand(tmp, feed_raw)
        daemon = bench_daemon(clock, tmp, args.seconds)
        # the trade-off: half the messages and wakeups for 20 ms more latency each way
        coarse = bench_daemon(clock, tmp, min(args.seconds, 30.0), frame_ms=40, period_ms=40)
        # the coarsest the config allows: a fifth of the wakeups, 80 ms more each way
        coarsest = bench_daemon(clock, tmp, min(args.seconds, 30.0), frame_ms=100,
                                period_ms=100)
        idle_clock = bench_idle_streams(clock, min(args.seconds, 30.0))
        minimal = bench_minimal_pipeline(min(args.seconds, 30.0))
        pulse = Pulse(tmp / "pulse")
        pulse.start()
        try:
            pa = bench_portaudio(pulse)
            pulse.add_sink("mic48", 48000)  # the daemon's USB mic
            # ALSA as on a device: no libasound2-plugins set, only the stand-in sound card
            on_pulse = bench_daemon(pulse_stand(pulse, feed_wav), tmp, min(args.seconds, 30.0))
            plugins = bench_daemon(pulse_stand(pulse, feed_wav, machine_alsa=True), tmp,
                                   min(args.seconds, 15.0))
            idle_pulse = bench_idle_streams(pulse_stand(pulse, feed_wav),
                                            min(args.seconds, 30.0))
            pa_rss = bench_portaudio_rss(pulse)
        finally:
            pulse.stop()
    bare = bare_import_rss()
    bare_numpy = bare_import_rss(", numpy, soxr")  # what the daemon imported before
    soxr_c, naive = conv["soxr stream"], conv["naive"]
    probe = ToWire(48000)  # audio the resampler holds back: 1 s in, how much less out
    held = 24000 - sum(len(probe.convert(bytes(960))) // 2 for _ in range(100))
    def cpu(run: dict[str, Any]) -> str:
        return f"{run['cpu_pct']:.1f} %"

    rows = [
        ("daemon CPU, full duplex (% of one core)", cpu(daemon),
         f"timer-clocked ALSA device; over {daemon['seconds']:.0f} s, "
         f"{daemon['audio_sent_s']:.0f} s of mic audio sent, {daemon['records']} transcripts"),
        ("  with 40 ms mic frames and speaker periods", cpu(coarse),
         f"a {coarse['seconds']:.0f} s run (frame_ms and period_ms 40: half the messages "
         "and wakeups, 20 ms more latency each way)"),
        ("  with 100 ms frames and periods", cpu(coarsest),
         f"a {coarsest['seconds']:.0f} s run (the largest frame_ms and period_ms the config "
         "allows: 80 ms more latency each way, barge-in silent 80 ms later)"),
        ("  on the PulseAudio stand-in", cpu(on_pulse),
         f"a {on_pulse['seconds']:.0f} s run through ALSA's pulse plugin (libpulse's thread "
         "and protocol run in the daemon)"),
        ("  by thread", ", ".join(f"{k} {v:.2f} %" for k, v in sorted(
            daemon["threads"].items(), key=lambda kv: -kv[1]) if v >= 0.005), ""),
        ("  baseline: PortAudio on the clocked device", f"{idle_clock:.1f} %",
         "a process holding the same two streams open with empty callbacks; through the "
         f"pulse plugin: {idle_pulse:.1f} %"),
        ("  baseline: a minimal Python mic uplink", f"{minimal:.1f} %",
         "a thread hands 20 ms frames to asyncio, sent as JSON appends over websockets"),
        ("daemon peak RSS", f"{daemon['rss_mb']:.1f} MB",
         "the clocked device, ALSA configured as on a device (no libasound2-plugins)"),
        ("  on the PulseAudio stand-in", f"{on_pulse['rss_mb']:.1f} MB",
         "libpulse and its plugin loaded"),
        ("  with this machine's ALSA plugins", f"{plugins['rss_mb']:.1f} MB",
         f"the stand-in, a {plugins['seconds']:.0f} s run; PortAudio loads every plugin "
         "it enumerates"),
        ("  of which anonymous (heap, buffers)", f"{daemon['anon_mb']:.1f} MB",
         "at the end of the run; the rest are library pages the kernel can drop"),
        ("  bare interpreter importing voiced", f"{bare:.1f} MB",
         f"with numpy and python-soxr, as before: {bare_numpy:.1f} MB"),
        ("  PortAudio init + a stream", f"{pa_rss['machine']:.1f} MB",
         f"with this machine's ALSA plugins; {pa_rss['pulse only']:.1f} MB with only "
         "the pulse plugin configured"),
        ("capture conversion CPU (48k stereo to 24k)",
         f"{soxr_c['cpu_us_per_s']:.0f} us per s of audio",
         f"naive per-chunk linear: {naive['cpu_us_per_s']:.0f} us "
         f"({soxr_c['cpu_us_per_s'] / naive['cpu_us_per_s']:.2f}x)"),
        ("capture error vs one-shot resample", f"{soxr_c['max_err']:.0f} LSB",
         f"naive: {naive['max_err']:.0f} LSB (clicks at chunk borders)"),
        ("mic to socket: callback to loop", ms(pa["hops"]),
         f"+ encode {ms(pa['encode'])}; + framing up to one 20 ms frame; "
         f"+ resampler holds {held / 24:.2f} ms"),
        ("socket to device: play() to PortAudio", ms(pa["lat80"]),
         f"with jitter_ms 80; with jitter_ms 0: {ms(pa['lat0'])}"),
        ("barge-in: audio_end error (heard - reported)",
         f"max {max(abs(e) for e in pa['errors']):.2f} ms",
         f"over {len(pa['errors'])} interruptions at varying points"),
        ("barge-in: speaker sounds after stop()", ms(pa["tails"]),
         f"device output latency {pa['out_latency'] * 1000:.0f} ms; measured at the sink "
         "monitor, so it includes the monitor's own delay"),
        ("playback underruns in the run", str(daemon["underruns"]), ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<36}  {note}")


if __name__ == "__main__":
    main()
