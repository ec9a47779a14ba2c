"""Does the room of tests/test_aec_run.py keep time? A probe of the rig alone.

It starts the test's PulseAudio server (tests/pulse.py) with the sinks ``spk`` and
``mic``, the room (tests/room_process.py, started as that test starts it), plays a click
every 500 ms into ``spk`` (pacat, from a file) and records ``spk.monitor`` and
``mic.monitor`` (parec). Then it reports, for every click:

- the interval between clicks in ``spk.monitor`` (the clicker's own timeline),
- in the room's recording of its input (a gap there: the room's input overflowed),
- in ``mic.monitor`` (what the daemon under test would hear),
- the room's delay (``mic.monitor`` against ``spk.monitor``, relative to the first
  click's: both recordings are gapless, so any change is the room's path moving),

and the over/underflow flags PortAudio reported in the room's stream, and how the
server's and the room's threads are scheduled. ``--busy N`` runs N busy loops
(``while :; do :; done``, normal priority) while it measures, as scripts/under_load.sh
does. Run it from the repository: ``python -m tests.room_probe --seconds 30 --busy 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tests.pulse import Pulse
from tests.room_process import RATE, room_command

PERIOD = RATE // 2  # a click every 500 ms
CLICK = 24  # 1 ms
CLICK_LEVEL = 10000
ONSET = 1000  # a click's level in the recordings (the room halves it: 5000)


@dataclass
class ProbeResult:
    seconds: float
    busy: int
    clicks: int = 0
    spk_intervals: list[int] = field(default_factory=list)
    room_intervals: list[int] = field(default_factory=list)
    mic_intervals: list[int] = field(default_factory=list)
    delay_drift: list[int] = field(default_factory=list)  # samples, against the first
    room_flags: list[tuple[int, int]] = field(default_factory=list)
    room_latency: str = ""
    room_moved: list[tuple[int, int]] = field(default_factory=list)  # its own check
    room_checked: str = ""
    room_cpu: float = 0.0  # the room process's CPU time over its wall time
    scheduling: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        def spread(xs: list[int]) -> str:
            if not xs:
                return "none"
            off = [x - PERIOD for x in xs]
            return (f"{len(xs)} intervals, {sum(1 for o in off if o)} off 12000, "
                    f"range {min(off):+d}..{max(off):+d} samples")
        drift = (f"{min(self.delay_drift):+d}..{max(self.delay_drift):+d} samples"
                 if self.delay_drift else "none")
        return "\n".join([
            f"{self.seconds:.0f} s, {self.busy} busy loop(s), {self.clicks} clicks",
            f"  spk.monitor (clicker): {spread(self.spk_intervals)}",
            f"  room input:            {spread(self.room_intervals)}",
            f"  mic.monitor:           {spread(self.mic_intervals)}",
            f"  room delay drift:      {drift}",
            f"  room xruns:            {self.room_flags or 'none'}",
            f"  room's own mic check:  {self.room_checked}; {self.room_moved or 'no move'}",
            f"  room stream latency:   {self.room_latency}, its CPU {self.room_cpu:.0%}",
            *(f"  sched {k}: {v}" for k, v in self.scheduling.items()),
        ])


def onsets(x: np.ndarray) -> np.ndarray:
    """Sample indices where a click starts (loud after at least 200 ms of quiet)."""
    loud = np.nonzero(np.abs(x.astype(np.int32)) > ONSET)[0]
    if not len(loud):
        return loud
    keep = np.concatenate([[True], np.diff(loud) > RATE // 5])
    return np.asarray(loud[keep])


def scheduling(pid: int) -> str:
    """Each thread's policy and real-time priority (ps: FF = FIFO, RR, TS = normal)."""
    out = subprocess.run(["ps", "-L", "-o", "comm=,cls=,rtprio=,ni=", "-p", str(pid)],
                         capture_output=True, text=True, check=False).stdout
    return "; ".join(" ".join(line.split()) for line in out.splitlines())


def scheduling_cpu(pid: int) -> str:
    out = subprocess.run(["ps", "-L", "-o", "tid=,cls=,pcpu=", "-p", str(pid)],
                         capture_output=True, text=True, check=False).stdout
    return "; ".join(" ".join(line.split()) for line in out.splitlines())


@contextlib.contextmanager
def busy_loops(n: int) -> Iterator[None]:
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in loops:
            p.kill()
            p.wait()


def probe(root: Path, seconds: float, busy: int, room_args: list[str] | None = None
          ) -> ProbeResult:
    result = ProbeResult(seconds, busy)
    pulse = Pulse(root / "pulse")
    pulse.start()
    procs: list[subprocess.Popen[bytes]] = []
    room: subprocess.Popen[str] | None = None
    try:
        pulse.add_sink("spk", RATE)
        pulse.add_sink("mic", RATE)
        assert pulse.proc is not None
        result.scheduling["server"] = scheduling(pulse.proc.pid)
        raw = ["--raw", f"--rate={RATE}", "--channels=1", "--format=s16le"]
        rec = {name: root / f"{name}.raw" for name in ("spk", "mic")}
        for name, path in rec.items():
            procs.append(subprocess.Popen(
                ["parec", f"--device={name}.monitor", *raw, str(path)], env=pulse.env()))
        room = subprocess.Popen(
            room_command(["--delay-ms", "40", "--gain", "0.5",
                          "--out", str(root / "room"), *(room_args or [])]),
            env=pulse.env(PULSE_SOURCE="spk.monitor", PULSE_SINK="mic"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            stderr=open(root / "room.log", "wb"))  # noqa: SIM115
        time.sleep(1.0)  # the room's stream is running
        result.scheduling["room"] = scheduling(room.pid)
        clicks = np.zeros(int(seconds * RATE), np.int16)
        for at in range(PERIOD // 2, len(clicks) - CLICK, PERIOD):
            clicks[at:at + CLICK] = CLICK_LEVEL
        (root / "clicks.raw").write_bytes(clicks.tobytes())
        with busy_loops(busy):
            t0 = time.monotonic()
            play = subprocess.run(["pacat", "--playback", "--device=spk", *raw,
                                   str(root / "clicks.raw")], env=pulse.env(),
                                  capture_output=True, text=True, timeout=seconds + 60)
            if play.returncode:
                raise RuntimeError(f"pacat failed after {time.monotonic() - t0:.1f} s: "
                                   f"{play.stderr.strip()}; the room's threads: "
                                   f"{scheduling_cpu(room.pid)}")
            time.sleep(0.5)  # the last click through the room
        assert room.stdin is not None and room.stdout is not None
        room.stdin.write("stop\n")
        room.stdin.flush()
        out, _ = room.communicate(timeout=60)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        if room is not None and room.poll() is None:
            room.kill()
            room.wait()
        pulse.stop()
    for line in out.splitlines():
        word, *rest = line.split()
        if word == "flags":
            result.room_flags.append((int(rest[0]), int(rest[1])))
        elif word == "moved":
            result.room_moved.append((int(rest[0]), int(rest[1])))
        elif word == "checked":
            result.room_checked = line
        elif word == "cpu":
            result.room_cpu = float(rest[0])
        elif word == "latency":
            result.room_latency = " ".join(rest)
    spk = onsets(np.fromfile(rec["spk"], "<i2"))
    mic = onsets(np.fromfile(rec["mic"], "<i2"))
    room_in = onsets(np.load(root / "room.npz")["monitor"])
    n = min(len(spk), len(mic))
    result.clicks = n
    result.spk_intervals = np.diff(spk).tolist()
    result.room_intervals = np.diff(room_in).tolist()
    result.mic_intervals = np.diff(mic).tolist()
    delay = mic[:n] - spk[:n]
    result.delay_drift = (delay - delay[0]).tolist() if n else []
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--busy", type=int, default=0, help="busy loops while measuring")
    ap.add_argument("--json", action="store_true", help="the whole result as JSON")
    ap.add_argument("--room", default="", help="more arguments for the room")
    ap.add_argument("--keep", type=Path, help="work in this new directory, keep it")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True)
        result = probe(args.keep, args.seconds, args.busy, args.room.split())
    else:
        with tempfile.TemporaryDirectory(prefix="room-probe-") as tmp:
            result = probe(Path(tmp), args.seconds, args.busy, args.room.split())
    print(json.dumps(asdict(result)) if args.json else result.summary())
    sys.exit(0)


if __name__ == "__main__":
    main()
