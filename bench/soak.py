"""Soak: `voiced run` holding exchange after exchange while the simulator misbehaves.

Run: ``.venv/bin/python bench/soak.py [--minutes 30] [--seed N] [--audio pyaudio]``.
The daemon (a subprocess) asks the shipped question again and again; between and during
exchanges the simulator injects random faults: a connection dropped mid-reply, a network
drop, malformed/binary/unknown frames, refusing connections for a while, and session
expiry. With ``--audio pyaudio`` the daemon runs on PortAudio against a private
PulseAudio server (a 48 kHz mic sink the question is played into, a 24 kHz speaker, as
``scripts/setup.sh test`` installs), and the faults also include the sound card
disappearing for 1-4 s (both sinks unloaded, then loaded again); ALSA is configured as
on a device (only the pulse plugin; ``--machine-alsa`` keeps this machine's whole plugin
set). Sessions also end by
themselves every ``--session-s`` (default 60 s), so the daemon's planned
make-before-break rollovers run all the time. It prints
exchanges completed, faults injected, recoveries, transcripts lost, and the daemon's RSS
over time (which must stay flat).

Lost transcripts are counted from both ends: every user and assistant transcript the
simulator finished *and delivered* (its session stayed open for a second after) must be
at the sink, by id, exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.pulse import Pulse  # noqa: E402
from voiced.sim.server import SimOptions, SimServer  # noqa: E402
from voiced.transcripts import record_id  # noqa: E402

DEVICE = "soak"
QUESTION = REPO / "voiced" / "data" / "question.wav"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def ctl(cfg: Path, cmd: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voiced", "ctl", "-c", str(cfg), cmd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return dict(json.loads(out)) if cmd == "status" and proc.returncode == 0 else {}


def sink_ids(path: Path) -> collections.Counter[str]:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(json.loads(line)["id"] for line in path.read_text().splitlines())


async def wait_for(pred: Any, within_s: float) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if await pred():
            return True
        await asyncio.sleep(0.1)
    return False


async def soak(minutes: float, seed: int, tmp: Path, session_s: float,
               pulse: Pulse | None, unplugs: bool = True) -> dict[str, Any]:
    rng = random.Random(seed)
    faults: collections.Counter[str] = collections.Counter()
    jsonl = tmp / "t.jsonl"
    if pulse is None:
        audio: dict[str, Any] = {"backend": "file", "input": {"file": str(QUESTION)},
                                 "output": {"file": str(tmp / "out.wav")}}
        env = None
        kinds = ["drop_mid_reply", "network_drop", "junk_frames", "refuse", "expire"]
    else:
        pulse.add_sink("mic48", 48000)
        audio = {"backend": "pyaudio", "input": {"device": "pulse"},
                 "output": {"device": "pulse"}, "reopen_s": 0.5}
        env = pulse.env(PULSE_SOURCE="mic48.monitor", PULSE_SINK="null24",
                        **{k: v for k, v in os.environ.items() if k.startswith("MALLOC_")})
        kinds = ["drop_mid_reply", "network_drop", "junk_frames", "refuse", "expire"]
        if unplugs:
            kinds += ["unplug", "unplug"]
    async with SimServer(SimOptions(pace=2, max_session_s=session_s)) as sim:
        cfg = tmp / "voiced.yaml"
        cfg.write_text(json.dumps({
            "device_id": DEVICE, "log_level": "warning",
            "realtime": {"url": sim.url, "reconnect_min_s": 0.2, "reconnect_max_s": 2,
                         "rollover_margin_s": session_s / 3},
            "audio": audio,
            "transcripts": {"sink": "jsonl", "jsonl": {"path": str(jsonl)},
                            "outbox_dir": str(tmp / "outbox")},
            "control": {"socket": str(tmp / "ctl.sock")}}))
        with (tmp / "daemon.log").open("wb") as log:
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "voiced", "run", "-c", str(cfg), stderr=log, env=env)
        rss: list[tuple[float, float]] = []
        exchanges = recoveries = injected_before = 0
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < minutes * 60:
                if not await wait_for(lambda: _ready(cfg), 60):
                    raise SystemExit("the daemon did not come back to ready within 60 s")
                if faults.total() > injected_before:
                    recoveries += 1  # ready again after the last fault
                injected_before = faults.total()
                before = len(sink_ids(jsonl))
                fault = rng.choice(["none"] * 4 + kinds)
                await ctl(cfg, "press")
                if pulse is not None:  # a person asks the question into the mic
                    await asyncio.create_subprocess_exec(
                        "paplay", "--device=mic48", str(QUESTION), env=env,
                        stderr=asyncio.subprocess.DEVNULL)  # it complains when unplugged
                if fault != "none":
                    faults[fault] += 1
                    await asyncio.sleep(rng.uniform(0.2, 2.5))
                    if fault == "unplug" and pulse is not None:
                        pulse.unplug()  # both sinks: the USB sound card is gone
                        await asyncio.sleep(rng.uniform(1, 4))
                        pulse.plug()
                        pulse.add_sink("mic48", 48000)
                    else:
                        await inject(sim, fault, rng)
                done = await wait_for(lambda n=before + 2: _grew(jsonl, n), 40)
                if done:
                    exchanges += 1
                status = await ctl(cfg, "status")
                if status.get("mic") == "on":
                    await ctl(cfg, "press")
                rss.append((time.monotonic() - t0, rss_mb(daemon.pid)))
            device_faults = (await ctl(cfg, "status")).get("device_faults", "?")
        finally:
            daemon.terminate()
            await asyncio.wait_for(daemon.wait(), 30)
        delivered = _delivered_ids(sim)
    at_sink = sink_ids(jsonl)
    # a planned rollover: the next session was open before the old one ended
    rollovers = sum(1 for old, new in zip(sim.sessions, sim.sessions[1:], strict=False)
                    if old.ended_at is not None and new.sent_at
                    and new.sent_at[0] < old.ended_at)
    return {"exchanges": exchanges, "faults": dict(faults), "recoveries": recoveries,
            "sessions": len(sim.sessions), "rollovers": rollovers, "rss": rss,
            "lost": sorted(delivered - set(at_sink)),
            "duplicates": sorted(k for k, v in at_sink.items() if v > 1),
            "transcripts": len(delivered), "at_sink": len(at_sink),
            "exit": daemon.returncode, "device_faults": device_faults}


async def _ready(cfg: Path) -> bool:
    return (await ctl(cfg, "status")).get("state") in ("ready", "listening")


async def _grew(path: Path, n: int) -> bool:
    return len(sink_ids(path)) >= n


async def inject(sim: SimServer, fault: str, rng: random.Random) -> None:
    if fault == "drop_mid_reply":
        sim.drop_next_responses(1)
    elif fault == "network_drop":
        sim.drop_connections()
    elif fault == "junk_frames":
        for frame in (b"\x00\x01binary", "{not json", json.dumps({"type": "x.unknown"}),
                      json.dumps({"type": "response.output_audio.delta", "delta": "%%"})):
            await sim.inject(frame)
    elif fault == "refuse":
        sim.refuse_connections = True
        sim.drop_connections()
        await asyncio.sleep(rng.uniform(1, 6))
        sim.refuse_connections = False
    elif fault == "expire":
        sim.expire_sessions()


def _delivered_ids(sim: SimServer) -> set[str]:
    """Record ids of transcripts the simulator sent on a connection that then stayed up
    for at least a second (so the daemon surely read them)."""
    ids = set()
    for s in sim.sessions:
        for ev, at in zip(s.sent, s.sent_at, strict=True):
            item = None
            if ev["type"] == "conversation.item.input_audio_transcription.completed":
                item = ev["item_id"] if ev.get("transcript", "").strip() else None
            elif ev["type"] == "response.output_audio_transcript.done":
                item = ev["item_id"]
            if item is not None and (s.ended_at is None or s.ended_at - at >= 1.0):
                ids.add(record_id(DEVICE, item))
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    ap.add_argument("--session-s", type=float, default=60.0)
    ap.add_argument("--audio", choices=("file", "pyaudio"), default="file")
    ap.add_argument("--no-unplug", action="store_true",
                    help="pyaudio: leave the sound card plugged in (no device faults)")
    ap.add_argument("--machine-alsa", action="store_true",
                    help="pyaudio: use this machine's ALSA configuration with every plugin "
                         "(default: only the pulse plugin, as on a device)")
    args = ap.parse_args()
    print(f"soak: {args.minutes:g} min, seed {args.seed}, sessions of {args.session_s:g} s, "
          f"{args.audio} audio", flush=True)
    with tempfile.TemporaryDirectory(prefix="voiced-soak-") as d:
        pulse = (Pulse(Path(d) / "pulse", machine_alsa=args.machine_alsa)
                 if args.audio == "pyaudio" else None)
        if pulse is not None:
            pulse.start()
        try:
            r = asyncio.run(soak(args.minutes, args.seed, Path(d), args.session_s, pulse,
                                 unplugs=not args.no_unplug))
        finally:
            if pulse is not None:
                pulse.stop()
    rss = [mb for _, mb in r["rss"]]
    quarter = max(1, len(rss) // 4)
    growth = (sum(rss[-quarter:]) / quarter) - (sum(rss[:quarter]) / quarter)
    print(f"exchanges completed      {r['exchanges']}")
    print(f"faults injected          {sum(r['faults'].values())} {r['faults']}")
    print(f"sessions opened          {r['sessions']} "
          f"({r['rollovers']} planned rollovers, make before break)")
    print(f"transcripts delivered    {r['transcripts']} by the simulator, "
          f"{r['at_sink']} at the sink")
    print(f"lost transcripts         {len(r['lost'])}")
    print(f"duplicates at the sink   {len(r['duplicates'])}")
    print(f"RSS                      first quarter {sum(rss[:quarter]) / quarter:.1f} MB, "
          f"last quarter {sum(rss[-quarter:]) / quarter:.1f} MB, growth {growth:+.1f} MB")
    step = max(1, len(r["rss"]) // 8)
    print("RSS over time            " + ", ".join(
        f"{t / 60:.0f} min {mb:.1f}" for t, mb in r["rss"][::step]))
    print(f"device faults recovered  {r['device_faults']} (daemon's own count)")
    print(f"daemon exit status       {r['exit']}")
    sys.exit(0 if not r["lost"] and not r["duplicates"] and r["exit"] == 0 else 1)


if __name__ == "__main__":
    main()
