"""Active CPU (issue 21): ``voiced run`` in full duplex against the naive client
(``bench/naive_client.py``), at the same device rate, interleaved in one run.

Run: ``.venv/bin/python bench/active_bench.py [--seconds 20] [--rounds 2]
[--only clock|pulse] [--rates 24000,48000]`` (the stand-ins of ``bench/audio_bench.py``).
Per device and rate, ``--rounds`` times, alternating which goes first: the simulator and
one client, the same speech looping into the mic (the question, then 4 s of silence), the
simulator's server VAD answering each question with a spoken reply that the client plays;
CPU % of one core over ``--seconds`` (and per thread), appends sent and replies played.

- 24 kHz: mic and speaker at the wire rate, neither client resamples.
- 48 kHz: both at 48 kHz; the daemon resamples with libsoxr, the naive client decimates
  the mic by 2 (``[::2]``) and doubles each reply sample (``np.repeat``), and beside it
  "naive soxr", the same client resampling properly both ways (python-soxr streams, LQ as
  the daemon): what honest 48 kHz costs the naive client.

Beside them, once: the device-less floor of "a Python process that sends appends"
(``audio_bench.MINIMAL_PIPELINE``: a thread makes 20 ms of silence, no audio device, no
playback). It is not the naive client; it is what no client with a device goes below.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soxr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from audio_bench import (  # noqa: E402
    Stand,
    bench_daemon,
    bench_minimal_pipeline,
    clock_stand,
    cpu_seconds,
    free_port,
    make_feed,
    thread_cpu,
)

from tests.pulse import Pulse  # noqa: E402

NAIVE = REPO / "bench" / "naive_client.py"


def bench_naive(stand: Stand, tmp: Path, seconds: float, rate: int,
                resample: str = "naive") -> dict[str, Any]:
    """The naive client on ``stand`` at ``rate``, against the simulator, as bench_daemon
    runs the daemon (3 s to start and connect, the feeder, 2 s, then the window)."""
    port = free_port()
    env = stand.env
    procs: list[subprocess.Popen[Any]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "voiced", "sim", "--port",
                                       str(port)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        listening(port)
        log = (tmp / f"naive-{port}.log").open("wb")
        client = subprocess.Popen([sys.executable, str(NAIVE),
                                   f"ws://127.0.0.1:{port}/v1/realtime", stand.device,
                                   str(rate), resample],
                                  env=env, stdout=subprocess.PIPE, stderr=log)
        procs.append(client)
        assert client.stdout is not None
        if client.stdout.readline() != b"connected\n":  # blocks until it is, or it died
            raise SystemExit(f"the naive client failed:\n{Path(log.name).read_text()[-3000:]}")
        if stand.feeder is not None:
            procs.append(subprocess.Popen(stand.feeder, env=env))
        time.sleep(2.0)
        c0, t0, th0 = cpu_seconds(client.pid), time.monotonic(), thread_cpu(client.pid)
        time.sleep(seconds)
        c1, t1, th1 = cpu_seconds(client.pid), time.monotonic(), thread_cpu(client.pid)
        client.terminate()
        counts = json.loads(client.stdout.readline() or b"null")  # before it shuts down
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
    if not counts:
        raise SystemExit(f"the naive client failed:\n{Path(log.name).read_text()[-3000:]}")
    threads = {k: 100 * (v - th0.get(k, 0.0)) / (t1 - t0) for k, v in th1.items()}
    return {"cpu_pct": 100 * (c1 - c0) / (t1 - t0), "threads": threads, **counts}


def resample_cost(seconds: float = 60.0) -> dict[str, float]:
    """CPU µs per second of audio at 48 kHz mono, both ways (the mic 48 → 24 kHz in the
    daemon's 60 ms blocks, a reply 24 → 48 kHz in 100 ms deltas): voiced's libsoxr
    (``voiced.audio.convert``), the naive client's python-soxr streams, and its ``[::2]`` /
    ``np.repeat``. The floor under voiced's 48 kHz cost that the 24 kHz runs do not pay."""
    from voiced.audio.convert import QUALITY, FromWire, ToWire

    t = np.arange(int(48000 * seconds)) / 48000
    mic = (0.5 * np.sin(2 * np.pi * (200 + 40 * t) * t) * 32767).astype("<i2")
    reply = mic[::2].copy()
    blocks = [mic[i:i + 2880] for i in range(0, len(mic), 2880)]
    deltas = [reply[i:i + 2400] for i in range(0, len(reply), 2400)]
    out: dict[str, float] = {}
    to_wire, from_wire = ToWire(48000, 1), FromWire(48000, 1)
    up = soxr.ResampleStream(48000, 24000, 1, dtype="int16", quality=QUALITY)
    down = soxr.ResampleStream(24000, 48000, 1, dtype="int16", quality=QUALITY)
    ways: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
        "voiced libsoxr": (lambda b: to_wire.convert(b.tobytes()),
                           lambda d: from_wire.convert(d.tobytes())),
        "python-soxr streams": (up.resample_chunk, down.resample_chunk),
        "[::2] / np.repeat": (lambda b: b[::2].tobytes(),
                              lambda d: np.repeat(d, 2).tobytes())}
    for name, (mic_way, reply_way) in ways.items():
        c0 = time.process_time()
        for b in blocks:
            mic_way(b)
        c1 = time.process_time()
        for d in deltas:
            reply_way(d)
        c2 = time.process_time()
        out[f"{name} mic"] = (c1 - c0) / seconds * 1e6
        out[f"{name} reply"] = (c2 - c1) / seconds * 1e6
    return out


def listening(port: int, timeout: float = 30.0) -> None:
    """Until something accepts connections on ``port`` (a busy machine starts slowly)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on port {port}") from None
            time.sleep(0.1)


def run_daemon(stand: Stand, tmp: Path, seconds: float, rate: int, src: Path | None = None,
               **audio: Any) -> dict[str, Any]:
    return bench_daemon(stand, tmp, seconds, src=src,
                        input={"device": stand.device, "rate_hz": rate},
                        output={"device": stand.device, "rate_hz": rate}, **audio)


def feeds(tmp: Path) -> dict[int, tuple[Path, Path]]:
    """The mic's speech per rate, as WAV (for the PulseAudio feeder) and raw (the clocked
    device loops raw PCM at the stream's rate)."""
    wav, raw48 = make_feed(tmp)
    raw24 = tmp / "feed24.raw"
    pcm = np.frombuffer(raw48.read_bytes(), "<i2")
    raw24.write_bytes(soxr.resample(pcm, 48000, 24000).astype("<i2").tobytes())
    return {48000: (wav, raw48), 24000: (wav, raw24)}


def pulse_rate_stand(pulse: Pulse, rate: int, feed_wav: Path) -> Stand:
    """The PulseAudio stand-in with mic and speaker sinks at ``rate`` (the server
    resamples nothing for either client)."""
    env = pulse.env(PULSE_SOURCE=f"mic{rate}.monitor", PULSE_SINK=f"spk{rate}")
    return Stand(env, "pulse", ["sh", "-c", f"while :; do paplay --device=mic{rate} "
                                            f"{feed_wav}; done"])


def thread_text(threads: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
                     if v >= 0.01)


Runner = Callable[[Stand, int], dict[str, Any] | None]  # None: not at this rate


def contenders(tmp: Path, seconds: float, before: Path | None,
               variant: dict[str, Any] | None) -> dict[str, Runner]:
    """Who is measured: voiced, the naive client, and on request voiced from another
    commit's tree (``--before``) or with other ``audio`` settings (``--variant``)."""
    out: dict[str, Runner] = {
        "voiced": lambda st, rate: run_daemon(st, tmp, seconds, rate),
        "naive": lambda st, rate: bench_naive(st, tmp, seconds, rate),
        # at the wire rate nothing is resampled: it would be the naive client again
        "naive soxr": lambda st, rate: (None if rate == 24000 else
                                        bench_naive(st, tmp, seconds, rate, "soxr"))}
    if before is not None:
        out["voiced before"] = lambda st, rate: run_daemon(st, tmp, seconds, rate, src=before)
    if variant is not None:
        out["voiced variant"] = lambda st, rate: run_daemon(st, tmp, seconds, rate,
                                                            **variant)
    return out


def sent_s(got: dict[str, Any]) -> float:
    return float(got["audio_sent_s"]) if "audio_sent_s" in got else got["appends"] * 0.02


def compare(name: str, stands: dict[int, Stand], who: dict[str, Runner], seconds: float,
            rounds: int) -> list[str]:
    out = []
    for rate, stand in stands.items():
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in who}
        names = list(who)
        for r in range(rounds):
            for label in names[r % len(names):] + names[:r % len(names)]:  # rotate
                for _ in range(3):
                    got = who[label](stand, rate)
                    if got is None or sent_s(got) >= 0.8 * seconds:
                        break
                    # the machine starved the run (its mic ran behind): not a figure
                    print(f"  {name} {rate // 1000} kHz {label}: stalled ({sent_s(got):.0f} s "
                          f"of audio sent in {seconds:.0f} s), run again", flush=True)
                else:
                    continue  # three starved runs: this round has no figure for it
                if got is None:
                    continue
                runs[label].append(got)
                what = (f"{got['audio_sent_s']:.0f} s sent, {got['records']} transcripts, "
                        f"{got['underruns']} underruns" if "audio_sent_s" in got else
                        f"{got['appends']} appends, {got['replies']} replies")
                print(f"  {name} {rate // 1000} kHz {label}: {got['cpu_pct']:.2f} % "
                      f"({thread_text(got['threads'])}; {what})", flush=True)
        med = {k: float(np.median([x["cpu_pct"] for x in v]) if v else np.nan)
               for k, v in runs.items()}
        each = {k: " ".join(f"{x['cpu_pct']:.2f}" for x in v) for k, v in runs.items()}
        parts = [f"{k} {med[k]:.2f} % ({med[k] / med['naive']:.2f}x"
                 + (f", {med[k] / med['naive soxr']:.2f}x naive soxr"
                    if runs["naive soxr"] and k != "naive soxr" else "")
                 + f"; {each[k]}, {len(runs[k])} runs)"
                 for k in runs if runs[k]]
        out.append(f"{name} {rate // 1000} kHz, medians of the runs not starved: "
                   + "; ".join(parts))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="CPU window per run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each client per rate")
    ap.add_argument("--only", choices=("clock", "pulse"), help="one device")
    ap.add_argument("--rates", default="24000,48000", help="device rates, comma-separated")
    ap.add_argument("--before", metavar="COMMIT",
                    help="also run voiced as it was at COMMIT (before/after in one run)")
    ap.add_argument("--variant", metavar="JSON", type=json.loads,
                    help='also run voiced with these audio settings, e.g. {"period_ms": 40}')
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="voiced-active-bench-") as d:
        tmp = Path(d)
        feed = feeds(tmp)
        before = None
        if args.before:
            before = tmp / "before"
            before.mkdir()
            tree = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "voiced"],
                                  check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=tree, check=True)
        who = contenders(tmp, args.seconds, before, args.variant)
        if args.only in (None, "clock"):
            stands = {}
            for rate in rates:
                (tmp / f"c{rate}").mkdir()
                stands[rate] = clock_stand(tmp / f"c{rate}", feed[rate][1])
            lines += compare("clock", stands, who, args.seconds, args.rounds)
        if args.only in (None, "pulse"):
            pulse = Pulse(tmp / "pulse")
            pulse.start()
            try:
                for rate in rates:
                    pulse.add_sink(f"mic{rate}", rate)
                    pulse.add_sink(f"spk{rate}", rate)
                lines += compare("pulse", {r: pulse_rate_stand(pulse, r, feed[r][0])
                                           for r in rates}, who, args.seconds, args.rounds)
            finally:
                pulse.stop()
        floor = bench_minimal_pipeline(args.seconds)
    cost = resample_cost()
    for line in lines:
        print(line)
    print("resampling at 48 kHz, CPU per second of audio (1 s = 100 % of a core): "
          + "; ".join(f"{k} {v:.0f} us" for k, v in cost.items()))
    print(f"floor, a Python process that sends appends (no device, no playback; not the "
          f"naive client): {floor:.2f} %")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
