"""`voiced relay` in-process against `voiced sim` and a real PostgreSQL: handshake
refusals, the allow-list, conversations, transcripts written before they are forwarded,
idempotent rows, the spool while the database is away, hostile frames on both sides."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests import relay_rig
from tests.backends import rows
from tests.relay_rig import (
    Balancer,
    Client,
    device_name,
    eventually,
    messages,
    relay_in_process,
)
from voiced import guard
from voiced.relay import ledger as ledger_mod
from voiced.sim.server import SimOptions, SimServer
from voiced.transcripts import record_id

pg = relay_rig.pg  # one PostgreSQL per module


def message_exists(dsn: str, rid: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute(b"select 1 from chat_messages_v2 where id = %s",
                            (rid,)).fetchone() is not None


async def refused(relay: Any, token: str | None, **kw: Any) -> tuple[int, str, Any]:
    with pytest.raises(InvalidStatus) as e:
        await Client.open(relay.url, token, **kw)
    r = e.value.response
    return r.status_code, bytes(r.body or b"").decode(), r.headers


# ------------------------------------------------------------------ the exchange


async def test_a_spoken_exchange_writes_both_rows_before_the_device_hears_them(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript="what time is it")) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        name = device_name()
        token = await relay.store.add_device(name)
        c = await Client.open(relay.url, token)
        seen_in_db: dict[str, bool] = {}
        done_types = {"conversation.item.input_audio_transcription.completed",
                      "response.output_audio_transcript.done"}
        orig = c._changed.set

        def check() -> None:  # runs as each event arrives, with the loop held
            for e in c.events:
                if e["type"] in done_types and e["item_id"] not in seen_in_db:
                    seen_in_db[e["item_id"]] = message_exists(pg, record_id(name, e["item_id"]))
            orig()
        c._changed.set = check  # type: ignore[method-assign]

        created = await c.wait_for("session.created")
        announced = await c.wait_for("conversation_created")
        assert c.types()[:2] == ["session.created", "conversation_created"]
        cid = announced["conversation_id"]
        s = created["session"]  # the device sees the agent's session from the start
        assert s["instructions"] == "RELAY-OWNED INSTRUCTIONS"
        assert s["model"] == "gpt-realtime-2.1-mini"
        assert s["audio"]["input"]["transcription"]["model"] == "gpt-4o-mini-transcribe"
        assert s["expires_at"] > 0 and s["id"].startswith("sess_")
        await c.speak()
        await c.wait_for("response.done")
        assert seen_in_db and all(seen_in_db.values()), seen_in_db
        # the relay's own session.updated never reached the device
        assert c.of("session.updated") == []
        assert rows(pg, f"select agent_id, device_id from conversations where id = '{cid}'") \
            == [("home", name)]
        user, assistant = messages(pg, cid)
        assert user[1:3] == ("user", "what time is it")
        assert user[3] == {"input_method": "realtime_voice", "model": "gpt-realtime-2.1-mini",
                           "item_id": user[3]["item_id"]}
        assert user[0] == record_id(name, user[3]["item_id"])
        assert assistant[1:3] == ("assistant", "You said: what time is it")
        md = assistant[3]
        assert md["voice"] == "marin" and md["model"] == "gpt-realtime-2.1-mini"
        assert md["interrupted"] is False and md["response_id"].startswith("resp_")
        reply = sum(len(base64.b64decode(e["delta"])) for e in c.of("response.output_audio.delta"))
        assert md["audio_ms"] == round(reply / 48)
        # the sim got the relay's configuration, with the model in the URL
        upstream = sim.sessions[0]
        assert upstream.session["model"] == "gpt-realtime-2.1-mini"
        assert upstream.received[0]["event_id"] == "relay_setup"
        await c.close()


# ------------------------------------------------------------------ the handshake


async def test_refusals_at_the_handshake_come_before_any_upstream_connection(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        name, other = device_name(), device_name()
        token = await relay.store.add_device(name)
        other_token = await relay.store.add_device(other)
        c = await Client.open(relay.url, other_token)
        others = (await c.wait_for("conversation_created"))["conversation_id"]
        await c.close()
        attempts = len(sim.attempts)

        status, body, headers = await refused(relay, None)
        assert status == 401 and "token is required" in body
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert (await refused(relay, "vrt_not-a-real-token"))[:2] == (
            401, "unknown or revoked device token\n")
        assert (await refused(relay, token, agent_id=""))[0] == 400
        assert (await refused(relay, token, agent_id="nobody"))[:2] == (
            404, "unknown agent nobody\n")
        status, body, _ = await refused(relay, token, voice="alloy")
        assert status == 400 and "allowed: marin, cedar" in body
        assert (await refused(relay, token, conversation_id="42"))[0] == 400
        status, body, _ = await refused(relay, token, conversation_id=others)
        assert status == 404 and "for this device" in body  # another device's conversation
        status, _, _ = await refused(relay, token,
                                     conversation_id="00000000-0000-4000-8000-000000000000")
        assert status == 404  # unknown: the same answer, no oracle
        with pytest.raises(InvalidStatus) as e:  # a path the relay does not serve
            await Client.open(relay.url.replace("/v1/realtime", "/other"), token)
        assert e.value.response.status_code == 404
        assert await relay.store.revoke_device(name)
        assert (await refused(relay, token))[0] == 401  # revoked
        assert len(sim.attempts) == attempts  # none of these reached upstream


async def test_connection_attempts_are_rate_limited_per_address_and_per_device(
        tmp_path: Path, pg: str) -> None:
    now = [1000.0]
    async with SimServer(SimOptions()) as sim, relay_in_process(
            tmp_path, sim.url, pg, clock=lambda: now[0],
            limits={"device_connect_burst": 2, "device_connects_per_min": 6,
                    "address_connect_burst": 4, "address_connects_per_min": 60}) as relay:
        token = await relay.store.add_device(device_name())
        for _ in range(2):
            c = await Client.open(relay.url, token)
            await c.wait_for("session.created")
            await c.close()
        status, body, headers = await refused(relay, token)
        assert status == 429 and "this device" in body
        assert int(headers["Retry-After"]) == 10  # 6 a minute: one every 10 s
        now[0] += 10
        c = await Client.open(relay.url, token)  # refilled
        await c.close()
        # unknown tokens spend the address's bucket: the flood stops before the database
        got = [await refused(relay, "vrt_guess") for _ in range(4)]  # 3 left in the bucket
        assert [g[0] for g in got] == [401, 401, 401, 429]
        assert "this address" in got[-1][1]
        now[0] += 1
        assert (await refused(relay, "vrt_guess"))[0] == 401


async def test_a_browser_sends_its_token_as_a_subprotocol(tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        token = await relay.store.add_device(device_name())
        c = await Client.open(relay.url, token, subprotocol_token=True)
        await c.wait_for("session.created")
        assert c.ws.subprotocol == "voiced-relay"  # the token is never echoed
        await c.close()


# ------------------------------------------------------------------ the allow-list


async def test_the_device_may_change_only_what_the_agent_allows(tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        c = await Client.open(relay.url, await relay.store.add_device(device_name()))
        await c.wait_for("session.created")
        await c.send({"type": "session.update", "session": {
            "type": "realtime", "instructions": "DEVICE INSTRUCTIONS", "model": "other",
            "tools": [{"type": "function", "name": "evil", "parameters": {}}],
            "audio": {"input": {"transcription": {"model": "whisper-1"}, "turn_detection": None,
                                "format": {"type": "audio/pcm", "rate": 24000}},
                      "output": {"voice": "cedar"}}}})
        updated = await c.wait_for("session.updated")
        s = updated["session"]  # the answer to the device's own update
        assert s["instructions"] == "RELAY-OWNED INSTRUCTIONS"
        assert [t["name"] for t in s["tools"]] == ["get_time"]
        assert s["audio"]["input"]["transcription"]["model"] == "gpt-4o-mini-transcribe"
        assert s["audio"]["output"]["voice"] == "cedar"  # allowed
        assert s["audio"]["input"]["turn_detection"] is None  # allowed
        sent = [e for e in sim.sessions[0].received if e["type"] == "session.update"][1]
        assert sent["session"] == {"type": "realtime", "audio": {
            "input": {"turn_detection": None}, "output": {"voice": "cedar"}}}
        # a voice outside the list is ignored, and the device still gets its answer
        await c.send({"type": "session.update", "session": {
            "type": "realtime", "audio": {"output": {"voice": "alloy"}}}})
        updated = await c.wait_for("session.updated", 2)
        assert updated["session"]["audio"]["output"]["voice"] == "cedar"
        # per-response overrides are dropped; system items and unknown events refused
        await c.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "system",
            "content": [{"type": "input_text", "text": "new rules"}]}})
        await c.send({"type": "session.close"})
        await c.send({"type": "response.create", "response": {"instructions": "shout"}})
        await c.wait(lambda: len(c.of("error")) >= 2)
        codes = [e["error"]["code"] for e in c.of("error")]
        assert codes[:2] == ["relay_item_not_allowed", "relay_event_not_allowed"]
        await c.wait(lambda: any(e["type"] == "response.create"
                                 for e in sim.sessions[0].received))
        received = sim.sessions[0].received
        assert not any(e["type"] in ("session.close",) or e.get("item", {}).get("role")
                       == "system" for e in received)
        assert [e for e in received if e["type"] == "response.create"][0].get(
            "response") is None
        await c.close()


# ------------------------------------------------------------------ conversations


async def test_a_device_continues_its_conversation_on_a_second_connection_at_once(
        tmp_path: Path, pg: str) -> None:
    """The 60-minute rollover: a second connection opens before the first ends; both
    carry the same conversation, and each one's exchange is written to it."""
    async with SimServer(SimOptions(pace=4, transcript="hello there")) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        token = await relay.store.add_device(device_name())
        first = await Client.open(relay.url, token)
        cid = (await first.wait_for("conversation_created"))["conversation_id"]
        second = await Client.open(relay.url, token, conversation_id=cid)
        await second.wait_for("session.created")
        assert second.of("conversation_created") == []  # it was given one
        await asyncio.gather(first.speak(), second.speak())
        await asyncio.gather(first.wait_for("response.done"), second.wait_for("response.done"))
        got = messages(pg, cid)
        assert sorted(r[1] for r in got) == ["assistant", "assistant", "user", "user"]
        assert len({r[0] for r in got}) == 4
        await first.close()
        await second.close()


# ------------------------------------------------------------------ a scripted upstream


class ScriptedUpstream:
    """A GA server that answers the relay's set-up, then plays ``script`` (frames)."""

    def __init__(self, script: list[str | bytes]) -> None:
        self.script = script
        self.connections = 0
        self.server: Any = None
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        await ws.send(json.dumps({"type": "session.created", "session": {
            "id": "sess_x", "model": "m", "expires_at": 1}}))
        setup = json.loads(await ws.recv())
        assert setup["event_id"] == "relay_setup"
        await ws.send(json.dumps({"type": "session.updated", "session": {
            **setup["session"], "id": "sess_x"}}))
        for frame in self.script:
            await ws.send(frame)
        await ws.wait_closed()

    async def __aenter__(self) -> ScriptedUpstream:
        self.server = await serve(self.handler, "127.0.0.1", 0, max_size=None)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/realtime"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


def _ev(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


TRANSCRIPT_EVENTS = [
    _ev("conversation.item.input_audio_transcription.completed", item_id="item_u1",
        content_index=0, transcript="hello"),
    _ev("response.output_audio.delta", response_id="resp_1", item_id="item_a1",
        content_index=0, delta=base64.b64encode(bytes(4800)).decode()),
    _ev("response.output_audio_transcript.done", response_id="resp_1", item_id="item_a1",
        content_index=0, transcript="hi there"),
    _ev("response.done", response={"id": "resp_1", "status": "completed", "output": [
        {"id": "item_a1", "type": "message", "content": [{"transcript": "hi there"}]}]}),
]
HOSTILE = [b"\x00\x01binary", "not json", "[1, 2]", '{"type": 5}', "[" * 5000 + "]" * 5000,
           _ev("conversation.item.input_audio_transcription.completed", item_id=7),
           _ev("conversation.item.input_audio_transcription.completed", item_id="item_nul",
               content_index=0, transcript="a\x00b\ud800c")]


async def test_replayed_transcripts_and_hostile_upstream_frames_make_no_duplicates(
        tmp_path: Path, pg: str) -> None:
    script: list[str | bytes] = [*TRANSCRIPT_EVENTS, *HOSTILE, *TRANSCRIPT_EVENTS,
                                 _ev("marker")]
    async with ScriptedUpstream(script) as up, relay_in_process(tmp_path, up.url, pg) as relay:
        name = device_name()
        token = await relay.store.add_device(name)
        c = await Client.open(relay.url, token)
        cid = (await c.wait_for("conversation_created"))["conversation_id"]
        await c.wait_for("marker")
        await c.close()
        # a reconnect into the same conversation replays everything again
        c = await Client.open(relay.url, token, conversation_id=cid)
        await c.wait_for("marker")
        await c.close()
        got = messages(pg, cid)
        # NUL and a lone surrogate cannot be stored: both become U+FFFD
        assert sorted((r[1], r[2]) for r in got) == [
            ("assistant", "hi there"), ("user", "a\ufffdb\ufffdc"), ("user", "hello")]
        assert {r[0] for r in got} >= {record_id(name, "item_u1"), record_id(name, "item_a1")}
        assert relay.counters["malformed_upstream"] >= 2 * 5
        # hostile frames were dropped, the rest forwarded unchanged
        assert "marker" in c.types() and 5 not in c.types()


async def test_a_truncated_reply_is_marked_on_its_row(tmp_path: Path, pg: str) -> None:
    script: list[str | bytes] = [*TRANSCRIPT_EVENTS[:3], _ev(
        "conversation.item.truncated", item_id="item_a1", content_index=0, audio_end_ms=40),
        _ev("marker")]
    async with ScriptedUpstream(script) as up, relay_in_process(tmp_path, up.url, pg) as relay:
        name = device_name()
        c = await Client.open(relay.url, await relay.store.add_device(name))
        cid = (await c.wait_for("conversation_created"))["conversation_id"]
        await c.wait_for("marker")
        (md,) = [r[3] for r in messages(pg, cid) if r[1] == "assistant"]
        assert md["interrupted"] is True and md["heard_ms"] == 40 and md["audio_ms"] == 100
        await c.close()


# ------------------------------------------------------------------ the spool


async def test_transcripts_wait_in_the_spool_while_the_database_is_away(
        tmp_path: Path, pg: str) -> None:
    host, port = pg.rsplit("@", 1)[1].split("/")[0].split(":")
    lb = Balancer([(host, int(port))])
    await lb.start()
    dsn = pg.replace(f":{port}/", f":{lb.port}/")
    async with SimServer(SimOptions(pace=4, transcript="remember this")) as sim, \
            relay_in_process(tmp_path, sim.url, dsn,
                             database={"timeout_s": 1, "write_timeout_s": 0.5}) as relay:
        c = await Client.open(relay.url, await relay.store.add_device(device_name()))
        cid = (await c.wait_for("conversation_created"))["conversation_id"]
        await lb.aclose()  # the database goes away (open connections cut too)
        await c.speak()
        await c.wait_for("response.done")  # the device heard everything meanwhile
        assert messages(pg, cid) == []
        assert relay.counters["spooled"] == 2 and relay.spool.pending == 2
        lb2 = Balancer([(host, int(port))])
        lb2.port = lb.port
        lb2.server = await asyncio.start_server(lb2._serve, "127.0.0.1", lb.port)
        try:
            await eventually(lambda: len(messages(pg, cid)) == 2, 30)
            # the rows are visible at the commit; the spool file goes once deliver()
            # has returned, a moment later (a loaded clean-clone run read 1 here)
            await eventually(lambda: relay.spool.pending == 0, 30)
        finally:
            await c.close()
            await lb2.aclose()


# ------------------------------------------------------------------ hostile devices


async def test_hostile_device_frames_are_refused_and_floods_closed_alone(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript="still here")) as sim, relay_in_process(
            tmp_path, sim.url, pg, limits={"frames_burst": 300, "frames_per_s": 1,
                                           "bad_frames_burst": 5,
                                           "max_frame_bytes": 8192}) as relay:
        token = await relay.store.add_device(device_name())
        good = await Client.open(relay.url, await relay.store.add_device(device_name()))
        await good.wait_for("session.created")

        bad = await Client.open(relay.url, token)
        await bad.wait_for("session.created")
        deep = json.dumps({"type": "session.update", "session": {"a": "[" * 40 + "]" * 40}})
        deep = deep.replace('"' + "[" * 40 + "]" * 40 + '"', "[" * 40 + "]" * 40)
        for frame in (b"\x00binary", "not json", "[" * 4000, json.dumps({"type": "x"}), deep):
            await bad.ws.send(frame)
        await bad.wait(lambda: len(bad.of("error")) >= 5)
        assert [e["error"]["code"] for e in bad.of("error")] == [
            "invalid_event", "invalid_json", "invalid_json", "relay_event_not_allowed",
            "invalid_event"]
        await bad.ws.send("nope")  # the sixth refused frame in a burst of five
        await bad.wait(lambda: bad.closed is not None)
        assert bad.closed is not None and bad.closed.rcvd is not None
        assert bad.closed.rcvd.code == 1008

        big = await Client.open(relay.url, token)
        await big.wait_for("session.created")
        await big.ws.send("x" * 9000)  # over max_frame_bytes
        await big.wait(lambda: big.closed is not None)
        assert big.closed.rcvd is not None and big.closed.rcvd.code == 1009

        flood = await Client.open(relay.url, token)
        await flood.wait_for("session.created")
        with pytest.raises(ConnectionClosed):
            for _ in range(400):
                await flood.send({"type": "input_audio_buffer.clear"})
                await asyncio.sleep(0)
        await flood.wait(lambda: flood.closed is not None)
        assert flood.closed.rcvd is not None and flood.closed.rcvd.code == 1008

        # the well-behaved device on the same relay never noticed
        await good.speak()
        await good.wait_for("response.done")
        assert good.closed is None
        await good.close()


async def test_a_bug_in_one_connection_is_contained(tmp_path: Path, pg: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    guard.reset_for_tests()
    async with SimServer(SimOptions(pace=4, transcript="fine")) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        victim, other = device_name(), device_name()
        real = ledger_mod.Ledger.from_upstream

        def buggy(self: Any, *a: Any) -> Any:
            if self.device == victim and a[0] == "response.created":
                raise RuntimeError("a bug")
            return real(self, *a)
        monkeypatch.setattr(ledger_mod.Ledger, "from_upstream", buggy)
        a = await Client.open(relay.url, await relay.store.add_device(victim))
        b = await Client.open(relay.url, await relay.store.add_device(other))
        await asyncio.gather(a.speak(), b.speak())
        await b.wait_for("response.done")
        await a.wait(lambda: a.closed is not None)
        assert a.closed is not None and a.closed.rcvd is not None
        assert a.closed.rcvd.code == 1011
        assert guard.faults["relay connection"] == 1
        await b.close()


# ------------------------------------------------------------------ upstream trouble


async def test_upstream_refusals_reach_the_device_as_retryable_closes(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(require_key="the-right-key")) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        token = await relay.store.add_device(device_name())
        c = await Client.open(relay.url, token)
        await c.wait(lambda: c.closed is not None)
        assert c.closed is not None and c.closed.rcvd is not None
        # not 3000: that would tell the device its own token is bad
        assert (c.closed.rcvd.code, c.closed.rcvd.reason) == (
            1011, "upstream refused the relay's key")
        sim.options.require_key = None
        sim.refuse_connections = True
        c = await Client.open(relay.url, token)
        await c.wait(lambda: c.closed is not None)
        assert c.closed.rcvd is not None and c.closed.rcvd.code == 1013


async def test_an_expiring_upstream_session_passes_its_ending_on(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(max_session_s=1.5)) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        c = await Client.open(relay.url, await relay.store.add_device(device_name()))
        await c.wait(lambda: c.closed is not None)
        assert c.of("error")[-1]["error"]["code"] == "session_expired"
        assert c.closed is not None and c.closed.rcvd is not None
        assert c.closed.rcvd.code == 1001


async def test_revoking_a_device_closes_its_open_connections(tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        name, other = device_name(), device_name()
        a = await Client.open(relay.url, await relay.store.add_device(name))
        b = await Client.open(relay.url, await relay.store.add_device(other))
        await a.wait_for("session.created")
        await b.wait_for("session.created")
        assert await relay.close_revoked() == 0
        assert await relay.store.revoke_device(name)
        assert await relay.close_revoked() == 1
        await a.wait(lambda: a.closed is not None)
        assert a.closed is not None and a.closed.rcvd is not None
        assert (a.closed.rcvd.code, a.closed.rcvd.reason) == (1008, "device token revoked")
        assert b.closed is None
        await b.close()


# ------------------------------------------------------------------ barge-in, tools


async def test_barge_in_and_tool_calls_pass_through(tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(pace=0.5, transcript="get time please")) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        name = device_name()
        c = await Client.open(relay.url, await relay.store.add_device(name))
        cid = (await c.wait_for("conversation_created"))["conversation_id"]
        await c.speak()
        call = await c.wait_for("response.function_call_arguments.done")
        assert call["name"] == "get_time"  # the agent's tool, declared by the relay
        await c.wait_for("response.done")
        await c.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call["call_id"],
            "output": '{"time": "12:00"}'}})
        await c.send({"type": "response.create"})
        delta = await c.wait_for("response.output_audio.delta")
        await c.send({"type": "response.cancel"})
        done = await c.wait_for("response.done", 2)
        assert done["response"]["status"] == "cancelled"
        await c.send({"type": "conversation.item.truncate", "item_id": delta["item_id"],
                      "content_index": 0, "audio_end_ms": 50})
        await c.wait_for("conversation.item.truncated")
        await c.wait(lambda: any(r[1] == "assistant" and r[3].get("heard_ms") == 50
                                 for r in messages(pg, cid)))
        (md,) = [r[3] for r in messages(pg, cid) if r[1] == "assistant"]
        assert md["interrupted"] is True and md["status"] == "cancelled"
        await c.close()


async def test_a_cancelled_spool_flush_leaves_the_other_connections_records_alone(
        tmp_path: Path) -> None:
    """Many bridges flush the one spool at once; one of them cancelled (its device went
    away) must not cancel the others' queued writes (found by bench/relay_bench.py: 119 of
    200 spooled transcripts were never written, though their devices had heard them)."""
    import threading

    from voiced.outbox import Outbox

    spool = Outbox(tmp_path / "spool", None)
    spool.open()
    gate = threading.Event()
    spool._io.submit(gate.wait, 10)  # the worker is busy: the writes below queue up
    spool.put({"id": "a"})

    async def flush_for(record_id: str) -> None:
        spool.put({"id": record_id})
        await spool.flush()

    victim = asyncio.create_task(flush_for("b"))
    survivor = asyncio.create_task(flush_for("c"))
    await asyncio.sleep(0.05)
    victim.cancel()  # its device went away mid-flush
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wait_for(survivor, 10)
    ids = sorted(json.loads(p.read_text())["id"] for p in (tmp_path / "spool").glob("*.json"))
    assert ids == ["a", "b", "c"]
    await spool.aclose()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificate")
async def test_the_relay_terminates_tls_with_its_own_certificate(tmp_path: Path,
                                                                 pg: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(subprocess.run, [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
        "-out", str(cert)], check=True, capture_output=True, timeout=60)
    async with SimServer(SimOptions()) as sim, relay_in_process(
            tmp_path, sim.url, pg,
            server={"tls": {"cert_file": str(cert), "key_file": str(key)}}) as relay:
        assert relay.url.startswith("wss://127.0.0.1:")
        token = await relay.store.add_device(device_name())
        trusted = ssl.create_default_context(cafile=str(cert))
        c = await Client.open(relay.url, token, ssl=trusted)
        await c.wait_for("session.created")
        await c.close()
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust it
            await Client.open(relay.url, token, ssl=ssl.create_default_context())
