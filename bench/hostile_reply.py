"""Memory under an endless reply: `voiced run` while a server streams audio without end.

Run: ``.venv/bin/python bench/hostile_reply.py [--seconds 60] [--speed 50]``.

A loopback server (tests/hostile.py) opens the session as the GA API does, waits until
the daemon (a subprocess on the file backend) is idle, then streams one reply that never
ends, ``--speed`` times faster than real time, ignoring ``response.cancel`` as a broken
or hostile server would. The daemon's RSS is sampled every 100 ms; the figure is its peak
beside the same run's idle RSS (the baseline), against the issue's bound of idle + 40 MB.
``--pythonpath DIR`` runs the daemon from another source tree (e.g. an export of an
older commit) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.hostile import HostileServer, Peer, endless_reply, rss_kb  # noqa: E402
from voiced.control import request  # noqa: E402

QUESTION = REPO / "voiced" / "data" / "question.wav"
BOUND_MB = 40.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def status(sock: Path) -> dict[str, Any]:
    reply = await asyncio.to_thread(request, sock, "status")
    return dict(reply.get("status") or {})


async def run(seconds: float, speed: float, max_queued_s: float | None,
              pythonpath: str | None, tmp: Path) -> dict[str, Any]:
    go, stop = asyncio.Event(), asyncio.Event()
    sent: list[int] = []

    async def script(peer: Peer) -> None:
        await go.wait()
        sent.append(await endless_reply(peer, speed=speed, stop=stop))

    async with HostileServer(script) as server:
        audio: dict[str, Any] = {"backend": "file", "input": {"file": str(QUESTION)},
                                 "output": {"file": str(tmp / "out.wav")}}
        if max_queued_s is not None:
            audio["max_queued_s"] = max_queued_s
        cfg = tmp / "voiced.yaml"
        cfg.write_text(yaml.safe_dump({
            "device_id": "bench", "realtime": {"url": server.url}, "audio": audio,
            "transcripts": {"sink": "none", "outbox_dir": str(tmp / "outbox")},
            "control": {"socket": str(tmp / "ctl.sock")}}))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VOICED_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env["CREDENTIALS_DIRECTORY"] = ""
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voiced", "run", "-c", str(cfg), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            cwd=pythonpath or str(REPO))
        sock = tmp / "ctl.sock"
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError, ValueError):
                    if (await status(sock)).get("state") == "ready":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not become ready")
                await asyncio.sleep(0.1)
            idle = 0
            for _ in range(20):  # two seconds idle: the baseline
                idle = max(idle, rss_kb(proc.pid))
                await asyncio.sleep(0.1)
            cpu0, t0 = cpu_s(proc.pid), time.monotonic()
            go.set()
            peak, queued, samples = idle, -1, []
            end = time.monotonic() + seconds
            while time.monotonic() < end and proc.returncode is None:
                peak = max(peak, rss_kb(proc.pid))
                samples.append(peak)
                with contextlib.suppress(OSError, ValueError):
                    queued = max(queued, int((await status(sock)).get("audio_queued_ms", -1)))
                await asyncio.sleep(0.1)
            cpu = (cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
            stop.set()
            final = await status(sock)
            alive = proc.returncode is None
        finally:
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
        await asyncio.sleep(0.2)
    return {"idle_mb": idle / 1024, "peak_mb": peak / 1024, "grew_mb": (peak - idle) / 1024,
            "audio_sent_s": (sent[0] if sent else 0) / 1000, "max_queued_ms": queued,
            "cpu_percent": cpu, "alive": alive, "faults": final.get("faults"),
            "overflows": final.get("playback_overflows"), "exit": proc.returncode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--speed", type=float, default=50.0, help="times real time")
    ap.add_argument("--max-queued-s", type=float, default=None,
                    help="audio.max_queued_s (default: the config's default)")
    ap.add_argument("--pythonpath", default=None,
                    help="run the daemon from this source tree instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="voiced-hostile-") as tmp:
        r = asyncio.run(run(args.seconds, args.speed, args.max_queued_s, args.pythonpath,
                            Path(tmp)))
    print(f"endless reply at {args.speed:g}x real time for {args.seconds:g} s "
          f"({r['audio_sent_s']:.0f} s of audio sent), daemon from "
          f"{args.pythonpath or 'this tree'}")
    print(f"  idle RSS (same-run baseline)  {r['idle_mb']:7.1f} MB")
    print(f"  peak RSS during the reply     {r['peak_mb']:7.1f} MB")
    print(f"  growth                        {r['grew_mb']:7.1f} MB  (bound: {BOUND_MB:g} MB)")
    queued = r["max_queued_ms"]
    print("  most audio queued             " + (f"{queued / 1000:7.1f} s" if queued >= 0
                                                 else "    n/a (not in its status)"))
    print(f"  daemon CPU during the reply   {r['cpu_percent']:7.1f} % of one core")
    print(f"  alive {r['alive']}, exit {r['exit']}, overflows {r['overflows']}, "
          f"faults {r['faults']}")
    return 0 if r["alive"] and r["grew_mb"] < BOUND_MB else 1


if __name__ == "__main__":
    sys.exit(main())
