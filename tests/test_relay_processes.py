"""`voiced relay` as real processes: a real device (`voiced run`, file audio) through the
relay to `voiced sim`; the token commands; config errors; two relays behind a TCP load
balancer with one killed mid-reply. Then the device against relays like the seed's:
R1-R4 of issue 20.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import relay_rig
from tests.backends import rows
from tests.conftest import TIMEOUT, clean_env, voiced_cmd, write_config
from tests.relay_rig import (
    Balancer,
    Client,
    add_device,
    device_name,
    eventually,
    messages,
    relay_config,
    relay_env,
    relay_process,
)
from tests.seed_relay import SEED_INSTRUCTIONS, SeedRelay
from tests.test_e2e import ctl, read_jsonl, wait_for_status
from voiced.sim.server import SimOptions, SimServer

pg = relay_rig.pg  # one PostgreSQL per module


@contextlib.asynccontextmanager
async def device(tmp_path: Path, url: str, name: str, token: str, *,
                 conversation_id: str | None, agent_id: str = "home",
                 audio_codec: str = "pcm16", **overrides: Any
                 ) -> AsyncIterator[tuple[Path, asyncio.subprocess.Process]]:
    """Today's `voiced run` (file audio, jsonl sink) pointed at a relay."""
    cfg = write_config(tmp_path, url, device_id=name, realtime={
        "url": url, "connect_timeout_s": 5,
        "relay": {"agent_id": agent_id, "conversation_id": conversation_id,
                  "audio_codec": audio_codec}}, **overrides)
    log = (tmp_path / "device.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *voiced_cmd("run", "-c", str(cfg)), env=clean_env(OPENAI_API_KEY=token),
        stdout=asyncio.subprocess.DEVNULL, stderr=log)
    try:
        yield cfg, proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), TIMEOUT)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


async def new_conversation(url: str, token: str) -> str:
    """What a fixed device will do by itself: connect with none, take the one announced."""
    c = await Client.open(url, token)
    cid = str((await c.wait_for("conversation_created"))["conversation_id"])
    await c.close()
    return cid


async def exchange(cfg: Path, tmp_path: Path, records: int) -> list[dict[str, Any]]:
    seen: list[str] = []
    await wait_for_status(cfg, lambda s: s["state"] == "ready", seen)
    assert (await ctl(cfg, "press"))["state"] == "listening"
    await eventually(lambda: len(read_jsonl(tmp_path / "t.jsonl")) >= records, TIMEOUT * 2)
    return read_jsonl(tmp_path / "t.jsonl")


async def exchange_through_relay(tmp_path: Path, pg: str, sim: SimServer
                                 ) -> tuple[str, str, list[dict[str, Any]], str]:
    """Today's device, given a conversation, holds one exchange through `voiced relay`.

    Returns the device name, the conversation, the device's records and the relay's log.
    """
    cfg = relay_config(tmp_path, sim.url)
    name = device_name()
    token = await add_device(cfg, pg, name)
    async with relay_process(cfg, pg, tmp_path / "relay.log") as relay:
        cid = await new_conversation(relay.url, token)
        async with device(tmp_path, relay.url, name, token, conversation_id=cid) as (
                dcfg, proc):
            records = await exchange(dcfg, tmp_path, 2)
        assert proc.returncode == 0
    return name, cid, records, relay.log()


# ------------------------------------------------------------------ today's device


@pytest.mark.timeout(120)
async def test_a_device_holds_a_spoken_exchange_through_voiced_relay(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript="what is the weather")) as sim:
        name, cid, records, log = await exchange_through_relay(tmp_path, pg, sim)
        assert "Traceback" not in log
    # every record the device kept is a row, under the same deterministic id
    got = {r[0]: r for r in messages(pg, cid)}
    assert [r["role"] for r in records] == ["user", "assistant"]
    for r in records:
        row = got[r["id"]]
        assert (row[1], row[2]) == (r["role"], r["text"])
        assert r["conversation_id"] == cid
    user, assistant = (got[r["id"]][3] for r in records)
    assert user["input_method"] == "realtime_voice"
    assert user["model"] == assistant["model"] == "gpt-realtime-2.1-mini"
    assert assistant["voice"] == "marin"
    # the device's own instructions, tools and transcription were not applied
    live = sim.sessions[-1].session
    assert live["instructions"] == "RELAY-OWNED INSTRUCTIONS"
    assert [t["name"] for t in live["tools"]] == ["get_time"]


def test_token_commands_and_config_errors(tmp_path: Path, pg: str) -> None:
    cfg = relay_config(tmp_path, "ws://127.0.0.1:9/v1/realtime")
    name = device_name()
    run = lambda *a: subprocess.run(voiced_cmd("relay", *a, "-c", str(cfg)),  # noqa: E731
                                    env=relay_env(pg), capture_output=True, text=True,
                                    timeout=TIMEOUT, check=False)
    added = run("add-device", name)
    token = added.stdout.strip()
    assert added.returncode == 0 and "shown once" in added.stderr
    assert token.startswith("vrt_") and len(token) > 40
    again = run("add-device", name)
    assert again.returncode == 1 and "already has a token" in again.stderr
    listed = run("list-devices")
    assert f"{name}\tadded" in listed.stdout and "active" in listed.stdout
    assert token not in listed.stdout + listed.stderr
    assert rows(pg, f"select count(*) from relay_devices where name = '{name}' "
                    f"and token_hash::text like '%{token[4:12]}%'") == [(0,)]
    revoked = run("revoke-device", name)
    assert revoked.returncode == 0 and "revoked" in revoked.stderr
    assert run("revoke-device", name).returncode == 1
    fresh = run("add-device", name)  # a revoked device may get a new token
    assert fresh.returncode == 0 and fresh.stdout.strip() != token
    assert run("add-device", "no spaces").returncode == 2
    # every problem at once, exit 78, no traceback; the secret is named, never shown
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: 70000, colour: blue}\nupstream: {url: "
                   "ws://example.org/v1/realtime}\nagents: [{id: 'a b', voice: robot}]\n")
    p = subprocess.run(voiced_cmd("relay", "-c", str(bad)), env=clean_env(),
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 78, p.stderr
    lines = p.stderr.strip().splitlines()
    for key in ("server.port", "server.colour", "upstream.url", "agents[0].id",
                "agents[0].voice", "credentials.postgres_dsn"):
        assert any(line.startswith(f"voiced: config error: {key}: ") for line in lines), key
    assert "Traceback" not in p.stderr


# ------------------------------------------------------------------ scale out, kill one


@pytest.mark.timeout(180)
async def test_a_relay_killed_mid_reply_the_other_carries_the_conversation_on(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(pace=0.5, transcript="tell me a story")) as sim:
        cfg_a = relay_config(tmp_path, sim.url, name="a.yaml")
        cfg_b = relay_config(tmp_path, sim.url, name="b.yaml")
        name = device_name()
        token = await add_device(cfg_a, pg, name)
        async with relay_process(cfg_a, pg, tmp_path / "a.log") as a, \
                relay_process(cfg_b, pg, tmp_path / "b.log") as b:
            lb = Balancer([("127.0.0.1", a.port), ("127.0.0.1", b.port)])
            await lb.start()
            url = f"ws://127.0.0.1:{lb.port}/v1/realtime"
            cid = await new_conversation(url, token)  # through a
            async with device(tmp_path, url, name, token, conversation_id=cid) as (dcfg, _):
                seen: list[str] = []
                await wait_for_status(dcfg, lambda s: s["state"] == "ready", seen)
                first = len(sim.sessions) - 1  # the device's session, through b
                assert lb.picked[-1] == 1
                assert (await ctl(dcfg, "press"))["state"] == "listening"
                # mid-reply: audio is flowing, the reply's transcript not yet sent, and the
                # device holds the user's words (the simulator may send them after the
                # reply's first audio: a kill before them left the device only 20 ms of
                # speech to replay, whose reply has no words, on a loaded machine)
                await eventually(lambda: sum(e["type"] == "response.output_audio.delta"
                                             for e in sim.sessions[first].sent) >= 3
                                 and any(r["role"] == "user" for r in read_jsonl(
                                     tmp_path / "t.jsonl")))
                b.kill()
                # the device reconnects through the balancer to a, the same conversation
                await eventually(lambda: len(sim.sessions) > first + 1 and
                                 any(e["type"] == "session.update"
                                     for e in sim.sessions[-1].received), TIMEOUT)
                assert lb.picked[-1] == 0
                await wait_for_status(dcfg, lambda s: s["state"] in ("listening", "ready")
                                      and s["connected"], seen)
                st = await ctl(dcfg, "status")
                if st["mic"] == "on":
                    await ctl(dcfg, "press")
                await ctl(dcfg, "press")  # the mic on again: the question once more
                await eventually(lambda: sum(r["role"] == "assistant" for r in read_jsonl(
                    tmp_path / "t.jsonl")) >= 2, TIMEOUT * 3)
            await lb.aclose()
            assert "Traceback" not in a.log()
    records = read_jsonl(tmp_path / "t.jsonl")
    got = {r[0]: r for r in messages(pg, cid)}
    # the reply cut by the kill never reached a relay whole: its partial words are the
    # device's alone; every other record the device kept is a row, and nothing twice
    cut = {e["item_id"] for e in sim.sessions[first].sent
           if e["type"] == "response.output_audio.delta"}
    kept = [r for r in records if r["metadata"]["item_id"] not in cut]
    assert [r["role"] for r in kept].count("user") >= 2
    assert [r["role"] for r in kept].count("assistant") >= 1
    for r in kept:
        assert r["id"] in got and got[r["id"]][2] == r["text"], r
    assert len(got) == len(kept)
    assert {r["conversation_id"] for r in records} == {cid}


# ------------------------------------------------------------------ R1-R4 (device side)


async def _relay_log_says(relay: Any, *needles: str) -> str:
    await eventually(lambda: any(n in relay.log() for n in needles), TIMEOUT)
    return str(relay.log())


@pytest.mark.timeout(120)
async def test_r1_a_device_without_a_conversation_takes_the_one_voiced_relay_makes(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript="hello")) as sim:
        cfg = relay_config(tmp_path, sim.url)
        name = device_name()
        token = await add_device(cfg, pg, name)
        async with relay_process(cfg, pg, tmp_path / "relay.log") as relay, \
                device(tmp_path, relay.url, name, token, conversation_id=None) as (dcfg, _):
            log = await _relay_log_says(relay, "refused a connection", "new conversation")
            assert "refused a connection" not in log, "the device sent an invented id"
            records = await exchange(dcfg, tmp_path, 2)
            cid = rows(pg, f"select id::text from conversations where device_id = '{name}'")
            assert len(cid) == 1
            assert {r["conversation_id"] for r in records} == {cid[0][0]}
            assert (await ctl(dcfg, "status"))["conversation_id"] == cid[0][0]
            assert len(messages(pg, cid[0][0])) == 2
            await ctl(dcfg, "long-press")  # a new conversation: made by the relay again
            await eventually(lambda: len(rows(pg, "select id from conversations where "
                                                  f"device_id = '{name}'")) == 2)


@pytest.mark.timeout(120)
async def test_r1_against_a_seed_relay_the_transcripts_are_saved(tmp_path: Path,
                                                                 pg: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript="hello")) as sim, \
            SeedRelay(sim.url, pg) as seed, \
            device(tmp_path, seed.url, device_name(), "any-token",
                   conversation_id=None) as (dcfg, _):
        await eventually(lambda: bool(seed.queries))
        assert "conversation_id" not in seed.queries[0], "the device sent an invented id"
        await exchange(dcfg, tmp_path, 2)
        await eventually(lambda: bool(seed.lost) or bool(rows(
            pg, "select 1 from chat_messages_v2 where content = 'hello'")))
        assert seed.lost == []


@pytest.mark.timeout(120)
async def test_r2_a_seed_relays_instructions_survive_the_devices_update(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, SeedRelay(sim.url, pg) as seed:
        cid = "6a1f3f9e-2d4b-4c55-9a77-0b1e2f3a4b5c"
        async with device(tmp_path, seed.url, device_name(), "any-token",
                          conversation_id=cid) as (dcfg, _):
            await eventually(lambda: bool(sim.sessions) and sum(
                e["type"] == "session.update" for e in sim.sessions[0].received) >= 2)
            live = sim.sessions[0].session
            assert live["instructions"] == SEED_INSTRUCTIONS
            assert live["audio"]["input"]["transcription"]["model"] == "whisper-1"


@pytest.mark.timeout(120)
async def test_r3_the_device_waits_for_the_answer_to_its_own_session_update(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, \
            SeedRelay(sim.url, pg, hold_device_update=True, release_s=10) as seed:
        cid = "6a1f3f9e-2d4b-4c55-9a77-0b1e2f3a4b5d"
        async with device(tmp_path, seed.url, device_name(), "any-token",
                          conversation_id=cid) as (dcfg, _):
            await wait_for_status(dcfg, lambda s: "state" in s, [])
            await ctl(dcfg, "press")  # the mic is on: audio goes once the device is set up
            await eventually(lambda: "first audio from the device" in seed.order,
                             TIMEOUT * 2)
            # the device's audio came only after the session.updated answering its update
            assert seed.first("session.updated #2 to the device") < seed.first(
                "first audio from the device"), seed.order


@pytest.mark.timeout(120)
async def test_r4_records_carry_the_model_the_relay_chose(tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript="which model")) as sim:
        _, _, records, _ = await exchange_through_relay(tmp_path, pg, sim)
    assert {r["metadata"]["model"] for r in records} == {"gpt-realtime-2.1-mini"}
    assert json.dumps(records)  # the records themselves are fine otherwise
