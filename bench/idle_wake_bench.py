"""Idle CPU of `voiced run` with the wake word listening, beside the same without it.

Run: ``.venv/bin/python bench/idle_wake_bench.py [--seconds 20]`` (needs ``voiced[wake]``,
pulseaudio, and the test extras). Each daemon runs on the real PortAudio stack (a
PulseAudio null sink and its monitor as the mic, tests/pulse.py), connected to the
simulator, idle (mic off, nothing playing); its CPU (utime + stime from /proc) is taken
over ``--seconds`` after it is ready, the two runs alternated ``--rounds`` times so the
machine's load falls on both alike. Figures are % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import voiced_cmd, write_config  # noqa: E402
from tests.pulse import Pulse  # noqa: E402
from voiced.sim.server import SimOptions, SimServer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def one(tmp: Path, pulse: Pulse, url: str, wake: bool, seconds: float) -> float:
    run = tmp / ("wake" if wake else "plain")
    run.mkdir(exist_ok=True)
    cfg = write_config(run, url, audio={"backend": "pyaudio", "input": {"device": "pulse",
                                                                        "file": None},
                                        "output": {"device": "pulse", "file": None}},
                       wake_word={"enabled": wake})
    proc = await asyncio.create_subprocess_exec(
        *voiced_cmd("run", "-c", str(cfg)), env=pulse.env(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    while b"voiced.supervisor: state ready" not in await asyncio.wait_for(
            proc.stderr.readline(), 60):
        pass
    drain = asyncio.create_task(proc.stderr.read())
    await asyncio.sleep(3)  # start-up work done
    c0, t0 = cpu_s(proc.pid), time.monotonic()
    await asyncio.sleep(seconds)
    used = (cpu_s(proc.pid) - c0) / (time.monotonic() - t0) * 100
    proc.terminate()
    await proc.wait()
    drain.cancel()
    return used


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pulse = Pulse(tmp / "pulse")
        pulse.start()
        try:
            async with SimServer(SimOptions()) as sim:
                got: dict[bool, list[float]] = {False: [], True: []}
                for _ in range(args.rounds):
                    for wake in (False, True):
                        got[wake].append(await one(tmp, pulse, sim.url, wake, args.seconds))
        finally:
            pulse.stop()
    print(f"idle `voiced run` on PulseAudio, {args.seconds:.0f} s x {args.rounds} rounds, "
          "% of one core:")
    for wake, label in ((False, "without the wake word (baseline)"),
                        (True, "with the wake word listening (okay_nabu)")):
        vals = got[wake]
        print(f"  {label:<44} mean {sum(vals) / len(vals):5.2f} %  "
              f"(runs: {', '.join(f'{v:.2f}' for v in vals)})")


if __name__ == "__main__":
    asyncio.run(main())
