"""kill -9, twenty times, while transcripts flow to a flaky webhook: nothing is lost,
nothing is doubled, the poison record is set aside, nothing is left pending."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.backends import FlakyWebhook
from tests.conftest import clean_env, voiced_cmd, write_config
from tests.test_e2e import ctl
from voiced.sim.server import SimOptions, SimServer
from voiced.transcripts import record_id

KILLS = 20


def produced(sim: SimServer, device_id: str) -> set[str]:
    """Record ids of transcripts the simulator sent on a connection that then stayed up
    for a second: the daemon surely read them before it could be killed."""
    ids = set()
    for s in sim.sessions:
        for ev, at in zip(s.sent, s.sent_at, strict=True):
            item = None
            if ev["type"] == "conversation.item.input_audio_transcription.completed":
                item = ev["item_id"] if ev["transcript"].strip() else None
            elif ev["type"] == "response.output_audio_transcript.done":
                item = ev["item_id"]
            if item is not None and s.ended_at is not None and s.ended_at - at >= 1.0:
                ids.add(record_id(device_id, item))
    return ids


def every_sent(sim: SimServer, device_id: str) -> set[str]:
    return {record_id(device_id, ev["item_id"]) for s in sim.sessions for ev in s.sent
            if ev["type"] in ("conversation.item.input_audio_transcription.completed",
                              "response.output_audio_transcript.done")}


@pytest.mark.timeout(300)
async def test_kill_9_twenty_times_loses_and_doubles_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("VOICED_CRASH_SEED", random.randrange(1 << 20)))
    print(f"crash test seed {seed} (VOICED_CRASH_SEED={seed} repeats it)")
    rng = random.Random(seed)
    poisoned: list[str] = []

    def poison(record: dict[str, Any]) -> bool:
        if not poisoned and record["role"] == "assistant":
            poisoned.append(record["id"])  # the first assistant record is poison
        return record["id"] in poisoned

    hook = FlakyWebhook(seed=seed, fail=0.2, drop=0.1, slow=0.1, slow_s=1.0, poison=poison)
    url = await hook.start()
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        async with SimServer(SimOptions(pace=4)) as sim:
            cfg = write_config(tmp_path, sim.url, transcripts={
                "sink": "webhook", "webhook": {"url": url}, "timeout_s": 0.5,
                "retry_max_s": 1})
            for n in range(KILLS + 1):
                with (logs / f"run{n}.log").open("wb") as log:
                    proc = await asyncio.create_subprocess_exec(
                        *voiced_cmd("run", "-c", str(cfg)), env=clean_env(), stderr=log)
                try:
                    await _until_ready(cfg)
                    await ctl(cfg, "press")  # ask the question (again)
                    if n < KILLS:
                        await asyncio.sleep(rng.uniform(1.5, 6.5))
                        proc.send_signal(signal.SIGKILL)
                    else:  # the last run: let everything finish, then stop cleanly
                        await _until(cfg, lambda st: st["outbox_pending"] == 0
                                     and st["records_written"] >= 2, 90)
                        proc.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(proc.wait(), 20)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            assert proc.returncode == 0
            expected = produced(sim, "test-device")
            sent = every_sent(sim, "test-device")
    finally:
        await hook.stop()

    at_sink = set(hook.records)
    posts = len(hook.seen)
    print(f"kills {KILLS}, sessions {len(sim.sessions)}, transcripts read by the daemon "
          f"{len(expected)}, at the sink {len(at_sink)}, POSTs {posts}, "
          f"accepted repeats {sum(hook.accepted.values()) - len(at_sink)}")
    assert len(expected) >= 10  # the test really had transcripts in flight
    assert expected - at_sink - set(poisoned) == set(), "transcripts lost"
    assert at_sink <= sent, "records the simulator never produced"
    assert poisoned and poisoned[0] not in at_sink
    outbox = tmp_path / "outbox"
    rejected = [json.loads(p.read_text())["id"] for p in (outbox / "rejected").iterdir()]
    assert rejected.count(poisoned[0]) == 1
    assert [p.name for p in outbox.iterdir() if p.is_file()] == []  # nothing pending
    for log in logs.iterdir():
        assert "Traceback" not in log.read_text(), log.name


async def _until_ready(cfg: Path) -> None:
    await _until(cfg, lambda st: st.get("state") in ("ready", "listening"), 30)


async def _until(cfg: Path, pred: Any, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            st = await ctl(cfg, "status")
        except (OSError, ValueError):
            st = {}
        if "state" in st and pred(st):
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(f"status never matched within {within_s} s")
