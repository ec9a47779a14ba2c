"""How much one `voiced relay` costs per device session, and what it adds to each frame.

    .venv/bin/python bench/relay_bench.py --devices 200 --seconds 30

N scripted devices (asyncio clients in this process, not N daemons) stream full-duplex
audio through one relay to `voiced sim` (its own process): 20 ms appends at real-time
pace, the shipped question then silence, over and over, so the simulator answers each
time with reply audio while the mic keeps streaming. In the same run M devices talk to
the simulator directly, as the baseline.

Latency: every device sends a probe twice a second (``conversation.item.retrieve`` of an
item that does not exist); the simulator answers at once with an ``error`` carrying the
probe's event_id. The round trip through the relay minus the direct one, in the same
run under the same simulator load, is what the relay adds (both directions).

CPU and RSS are read from /proc for the relay and the simulator separately. Lost
transcripts: every transcript event a device received must be a row in PostgreSQL.
Then the same with two relays on one PostgreSQL behind a TCP balancer (``--two``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from tests.backends import postgres, rows  # noqa: E402
from tests.conftest import clean_env  # noqa: E402
from tests.relay_rig import QUESTION, Balancer, RelayProcess, relay_config  # noqa: E402
from voiced.transcripts import record_id  # noqa: E402

FRAME_MS = 20
CLK = os.sysconf("SC_CLK_TCK")

SIM = textwrap.dedent("""
    import asyncio, functools, sys
    from voiced.sim import voice, server
    # the reply is the same words each time: speak them once (espeak-ng per reply would
    # make the simulator's cost, not the relay's, the subject of the benchmark)
    server.voice.speak = functools.lru_cache(maxsize=8)(voice.speak)
    async def main():
        sim = server.SimServer(server.SimOptions(transcript="what time is it"))
        await sim.start()
        print(sim.port, flush=True)
        await asyncio.Future()
    asyncio.run(main())
""")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_mem_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(next(line.split()[1] for line in status.splitlines()  # noqa: E731
                             if line.startswith(k))) / 1024
    return get("VmRSS:"), get("VmHWM:")


@dataclass
class Stats:
    rtt_ms: list[float] = field(default_factory=list)
    transcripts: list[tuple[str, str, str, str]] = field(default_factory=list)  # device, cid,
    # item, event type
    deltas: int = 0
    sent: int = 0
    late_ticks: int = 0
    errors: list[str] = field(default_factory=list)


class Device:
    def __init__(self, name: str, ws: ClientConnection, stats: Stats) -> None:
        self.name, self.ws, self.stats = name, ws, stats
        self.cid = ""
        self.pos = 0
        self.probes: dict[str, float] = {}
        self.seq = 0
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        with contextlib.suppress(Exception):
            async for frame in self.ws:
                now = time.monotonic()
                d = json.loads(frame)
                t = d["type"]
                if t == "response.output_audio.delta":
                    self.stats.deltas += 1
                elif t == "error":
                    sent = self.probes.pop(str(d["error"].get("event_id")), None)
                    if sent is not None:
                        self.stats.rtt_ms.append((now - sent) * 1000)
                elif t == "conversation_created":
                    self.cid = d["conversation_id"]
                elif t in ("conversation.item.input_audio_transcription.completed",
                           "response.output_audio_transcript.done"):
                    self.stats.transcripts.append((self.name, self.cid, d["item_id"], t))

    async def tick(self, audio: list[str], probe: bool) -> None:
        frame = audio[self.pos % len(audio)]
        self.pos += 1
        self.seq += 1
        await self.ws.send(f'{{"type":"input_audio_buffer.append","event_id":"a{self.seq}",'
                           f'"audio":"{frame}"}}')
        self.stats.sent += 1
        if probe:
            eid = f"probe_{self.seq}"
            self.probes[eid] = time.monotonic()
            await self.ws.send(json.dumps({"type": "conversation.item.retrieve",
                                           "event_id": eid, "item_id": "no_such_item"}))


def audio_frames() -> list[str]:
    pcm = QUESTION + bytes(48 * 1000 * 4)  # the question, then 4 s of quiet for the reply
    n = 48 * FRAME_MS
    return [base64.b64encode(pcm[i:i + n]).decode() for i in range(0, len(pcm) - n + 1, n)]


async def open_devices(url: str, tokens: list[tuple[str, str]], stats: Stats,
                       per_s: float) -> list[Device]:
    out: list[Device] = []
    for name, token in tokens:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        q = urlencode({"agent_id": "home"} if token else {"model": "gpt-realtime-2.1-mini"})
        try:
            ws = await connect(f"{url}?{q}", additional_headers=headers, open_timeout=30,
                               compression=None, max_size=16 << 20)
        except Exception as e:  # noqa: BLE001 - counted, reported
            stats.errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        d = Device(name, ws, stats)
        if not token:  # direct to the simulator: configure like the relay does
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "audio": {"input": {
                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}}))
        out.append(d)
        await asyncio.sleep(1 / per_s)
    return out


async def drive(devices: list[Device], seconds: float, stats_of: dict[int, Stats]) -> None:
    audio = audio_frames()
    period = FRAME_MS / 1000
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while (now := loop.time()) - start < seconds:
        target = start + n * period
        if now - target > period:
            for s in {id(s): s for s in stats_of.values()}.values():
                s.late_ticks += 1
        probe = n % (500 // FRAME_MS) == 0
        await asyncio.gather(*(d.tick(audio, probe) for d in devices),
                             return_exceptions=True)
        n += 1
        delay = start + n * period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


async def run(args: argparse.Namespace, work: Path, dsn: str) -> dict[str, Any]:
    sim = await asyncio.create_subprocess_exec(sys.executable, "-c", SIM,
                                               stdout=asyncio.subprocess.PIPE,
                                               env=clean_env())
    relays: list[RelayProcess] = []
    try:
        return await measure(args, work, dsn, sim, relays)
    finally:
        for r in relays:
            await r.stop()
        if sim.returncode is None:
            sim.kill()
            await sim.wait()


async def measure(args: argparse.Namespace, work: Path, dsn: str,
                  sim: asyncio.subprocess.Process, relays: list[RelayProcess]
                  ) -> dict[str, Any]:
    assert sim.stdout is not None
    sim_port = int((await sim.stdout.readline()).decode())
    sim_url = f"ws://127.0.0.1:{sim_port}/v1/realtime"
    limits = {"address_connect_burst": 100_000, "address_connects_per_min": 1_000_000,
              "frames_per_s": 1000}
    for i in range(2 if args.two else 1):
        cfg = relay_config(work, sim_url, name=f"relay{i}.yaml", limits=limits,
                           agents=[{"id": "home", "model": "gpt-realtime-2.1-mini",
                                    "turn_detection": {"type": "server_vad",
                                                       "silence_duration_ms": 500}}],
                           log_level=args.log_level, database={"pool_size": 10})
        relays.append(await RelayProcess(cfg, dsn, work / f"relay{i}.log").start())
    lb: Balancer | None = None
    url = relays[0].url
    if args.two:
        lb = Balancer([("127.0.0.1", r.port) for r in relays])
        await lb.start()
        url = f"ws://127.0.0.1:{lb.port}/v1/realtime"
    from voiced.config import Secret
    from voiced.relay.config import DatabaseSettings
    from voiced.relay.store import Store

    store = Store(DatabaseSettings(dsn=Secret(dsn)))
    await store.open()
    tokens = [(f"bench{i}", await store.add_device(f"bench{i}")) for i in range(args.devices)]
    await store.aclose()
    relayed, direct = Stats(), Stats()
    pids = {"relay": [r.proc.pid for r in relays if r.proc], "sim": [sim.pid]}
    idle = {k: [proc_mem_mb(p)[0] for p in v] for k, v in pids.items()}
    devs = await open_devices(url, tokens, relayed, args.connect_per_s)
    devs_direct = await open_devices(sim_url, [(f"direct{i}", "") for i in range(args.direct)],
                                     direct, args.connect_per_s)
    stats_of = {id(d): relayed for d in devs} | {id(d): direct for d in devs_direct}
    await drive(devs + devs_direct, args.warmup, stats_of)  # everyone streaming
    for s in (relayed, direct):
        s.rtt_ms.clear()
        s.late_ticks = s.sent = s.deltas = 0
    cpu0 = {k: [proc_cpu_s(p) for p in v] for k, v in pids.items()}
    me0, t0 = time.process_time(), time.monotonic()
    await drive(devs + devs_direct, args.seconds, stats_of)
    wall = time.monotonic() - t0
    cpu = {k: [(proc_cpu_s(p) - c) / wall * 100 for p, c in zip(v, cpu0[k], strict=True)]
           for k, v in pids.items()}
    clients_cpu = (time.process_time() - me0) / wall * 100
    mem = {k: [proc_mem_mb(p) for p in v] for k, v in pids.items()}
    await asyncio.sleep(3)  # transcripts in flight
    for d in devs + devs_direct:
        await d.ws.close()
    # a write slower than database.write_timeout_s went to the spool (fsynced) before
    # the device heard of it; the spool delivers it: wait for that, and say how many
    spools = [work / f"relay{i}.yaml.spool" for i in range(len(relays))]
    pending = lambda: sum(1 for sp in spools for _ in sp.glob("*.json"))  # noqa: E731
    spooled_at_end = pending()
    for _ in range(600):
        if not pending():
            break
        await asyncio.sleep(0.1)
    ids = {r[0] for r in rows(dsn, "select id::text from chat_messages_v2")}
    lost_first = [t for t in relayed.transcripts if record_id(t[0], t[2]) not in ids]
    if lost_first:  # late, or lost? look again
        await asyncio.sleep(10)
        ids = {r[0] for r in rows(dsn, "select id::text from chat_messages_v2")}
    logs = [r.log() for r in relays]
    spooled_total = sum(log.count("transcripts go to the spool") for log in logs)
    problems = [line for log in logs for line in log.splitlines()
                if "rejected" in line or "ERROR" in line or "Traceback" in line][:5]
    lost = [t for t in relayed.transcripts if record_id(t[0], t[2]) not in ids]
    per_relay = [sum(1 for i in (lb.picked if lb else []) if i == k) for k in range(2)]
    if lb is not None:
        await lb.aclose()
    relay_frames = relayed.sent * (1 + 1 / (500 // FRAME_MS)) + relayed.deltas
    return {"devices": len(devs), "direct": len(devs_direct), "wall_s": round(wall, 1),
            "relay_cpu_us_per_frame": round(sum(cpu["relay"]) / 100 * wall * 1e6
                                            / max(1, relay_frames), 1),
            "offered_frames_per_s": round(len(devs) * 1000 / FRAME_MS),
            "sent_frames_per_s": round(relayed.sent / wall),
            "relay_cpu_pct": [round(c, 1) for c in cpu["relay"]],
            "relay_cpu_pct_per_session": round(sum(cpu["relay"]) / max(1, len(devs)), 3),
            "sim_cpu_pct": round(cpu["sim"][0], 1), "clients_cpu_pct": round(clients_cpu, 1),
            "relay_rss_mb": [round(m[0], 1) for m in mem["relay"]],
            "relay_peak_rss_mb": [round(m[1], 1) for m in mem["relay"]],
            "relay_idle_rss_mb": [round(m, 1) for m in idle["relay"]],
            "relay_rss_kb_per_session": round(
                (sum(m[0] for m in mem["relay"]) - sum(idle["relay"])) * 1024
                / max(1, len(devs)), 1),
            "rtt_ms_relayed_p50_p99": [round(pct(relayed.rtt_ms, 50), 2),
                                       round(pct(relayed.rtt_ms, 99), 2)],
            "rtt_ms_direct_p50_p99": [round(pct(direct.rtt_ms, 50), 2),
                                      round(pct(direct.rtt_ms, 99), 2)],
            "added_ms_p50_p99_round_trip": [
                round(pct(relayed.rtt_ms, 50) - pct(direct.rtt_ms, 50), 2),
                round(pct(relayed.rtt_ms, 99) - pct(direct.rtt_ms, 99), 2)],
            "probes": [len(relayed.rtt_ms), len(direct.rtt_ms)],
            "reply_deltas": relayed.deltas,
            "late_ticks": relayed.late_ticks,
            "transcripts_seen_by_devices": len(relayed.transcripts),
            "transcripts_lost": len(lost), "connect_errors": relayed.errors[:3],
            "spooled_at_window_end": spooled_at_end, "spool_warnings": spooled_total,
            "still_spooled": pending(), "relay_log_problems": problems,
            "missing_at_first_count": len(lost_first),
            "lost_examples": lost[:3],
            "connections_per_relay": per_relay if lb else [len(devs)],
            "rtt_median_ms_relayed_mean": round(statistics.fmean(relayed.rtt_ms), 2)
            if relayed.rtt_ms else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--direct", type=int, default=20, help="baseline devices, direct to sim")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--connect-per-s", type=float, default=50.0)
    p.add_argument("--two", action="store_true", help="two relays on one PostgreSQL")
    p.add_argument("--keep", help="work in this directory and keep it (logs, spool)")
    p.add_argument("--log-level", default="warning", help="the relays' log_level")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        with postgres(work / "pg") as dsn:
            result = asyncio.run(run(args, work, dsn))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
