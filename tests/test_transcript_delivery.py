"""Transcripts are never lost: the outbox on disk, and each sink against a real backend."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.backends import CALLS, FlakyWebhook, pg_bin, postgres, postgrest_app, rows, serve_app
from tests.conftest import QUESTION_WAV, TIMEOUT
from voiced import config
from voiced.config import Secret
from voiced.outbox import Outbox, Outcome, Result
from voiced.sinks.http import SupabaseSink, WebhookSink
from voiced.sinks.jsonl import JsonlSink
from voiced.sinks.postgres import PostgresSink
from voiced.supervisor.daemon import Supervisor
from voiced.transcripts import Transcript, make_record

CONVERSATION = str(uuid.UUID(int=1))


def record(n: int, role: str = "user", text: str | None = None,
           conversation: str = CONVERSATION) -> dict[str, Any]:
    md = ({"input_method": "realtime_voice", "model": "gpt-realtime", "item_id": f"item_{n}"}
          if role == "user" else {"voice": "marin", "model": "gpt-realtime",
                                  "item_id": f"item_{n}", "interrupted": False,
                                  "heard_ms": 1200})
    return make_record(Transcript(role=role, text=text or f"utterance {n}",
                                  item_id=f"item_{n}", conversation_id=conversation,
                                  metadata=md), device_id="kitchen",
                       created_at=1_790_000_000 + n)


class ScriptedSink:
    """Answers from a script, then DELIVERED; remembers what it was given."""

    name = "scripted"

    def __init__(self, *answers: Outcome) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def deliver(self, rec: dict[str, Any]) -> Result:
        self.calls.append(rec["id"])
        outcome = self.answers.pop(0) if self.answers else Outcome.DELIVERED
        return Result(outcome, "scripted")

    async def aclose(self) -> None:
        pass


async def drain(box: Outbox) -> None:
    task = asyncio.create_task(box.run())
    try:
        await asyncio.sleep(0.05)
        await asyncio.wait_for(box.idle.wait(), TIMEOUT)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file())


# ------------------------------------------------------------------ the outbox


async def test_records_are_on_disk_whole_before_anything_else(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "ob", None)
    box.open()
    for n in range(3):
        box.put(record(n))
    await box.flush()
    names = files(tmp_path / "ob")
    assert len(names) == 3 and all(n.endswith(".json") for n in names)  # no temp files
    assert [json.loads((tmp_path / "ob" / n).read_text())["id"] for n in names] == [
        record(n)["id"] for n in range(3)]  # oldest first by name
    assert box.pending == 3
    await box.aclose()


async def test_delivery_is_oldest_first_and_removes_only_accepted(tmp_path: Path) -> None:
    sink = ScriptedSink(Outcome.RETRY, Outcome.RETRY)
    box = Outbox(tmp_path / "ob", sink, retry_min_s=0.01, retry_max_s=0.05,
                 rand=lambda: 1.0)
    box.open()
    for n in range(3):
        box.put(record(n))
    await box.flush()
    await drain(box)
    ids = [record(n)["id"] for n in range(3)]
    assert sink.calls == [ids[0], ids[0], ids[0], ids[1], ids[2]]  # retried, in order
    assert files(tmp_path / "ob") == [] and box.pending == 0 and box.delivered == 3
    await box.aclose()


async def test_backoff_is_jittered_exponential_and_capped(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(s: float) -> None:
        waits.append(s)
        await real_sleep(0)

    sink = ScriptedSink(*[Outcome.RETRY] * 8)
    box = Outbox(tmp_path / "ob", sink, retry_min_s=1, retry_max_s=10, rand=lambda: 0.5)
    box.open()
    box.put(record(1))
    await box.flush()
    monkeypatch.setattr("voiced.outbox.asyncio.sleep", fake_sleep)
    await drain(box)
    waits = [w for w in waits if w != 0.05]  # drain()'s own sleep went through the patch
    assert waits[:8] == [0.75, 1.5, 3.0, 6.0, 7.5, 7.5, 7.5, 7.5]  # base*(0.5+0.5*0.5)
    await box.aclose()


async def test_rejected_records_move_aside_logged_once(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    sink = ScriptedSink(Outcome.REJECTED)
    box = Outbox(tmp_path / "ob", sink)
    box.open()
    box.put(record(1))
    box.put(record(2))
    await box.flush()
    with caplog.at_level(logging.ERROR):
        await drain(box)
    assert len(files(tmp_path / "ob" / "rejected")) == 1
    assert sink.calls == [record(1)["id"], record(2)["id"]]
    assert len([r for r in caplog.records if "rejected transcript" in r.message]) == 1
    await box.aclose()


async def test_over_the_bound_the_oldest_go_with_a_warning(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    box = Outbox(tmp_path / "ob", None, max_records=3)
    box.open()
    with caplog.at_level(logging.WARNING):
        for n in range(5):
            box.put(record(n))
        await box.flush()
    kept = [json.loads((tmp_path / "ob" / n).read_text())["id"] for n in files(
        tmp_path / "ob")]
    assert kept == [record(n)["id"] for n in (2, 3, 4)]
    assert box.dropped == 2
    assert any("dropped the 1 oldest" in r.message for r in caplog.records)
    await box.aclose()


async def test_over_the_byte_bound_the_oldest_go_and_the_newest_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    size = len(json.dumps(record(1), ensure_ascii=False, separators=(",", ":")).encode())
    assert all(len(json.dumps(record(n), separators=(",", ":"))) == size for n in range(8))
    box = Outbox(tmp_path / "ob", None, max_bytes=3 * size + size // 2)  # room for 3
    box.open()
    with caplog.at_level(logging.WARNING):
        for n in range(5):
            box.put(record(n))
        await box.flush()
    names = files(tmp_path / "ob")
    kept = [json.loads((tmp_path / "ob" / n).read_text())["id"] for n in names]
    assert kept == [record(n)["id"] for n in (2, 3, 4)]
    assert sum((tmp_path / "ob" / n).stat().st_size for n in names) <= box.max_bytes
    assert box.dropped == 2
    assert any("over its bound" in r.message for r in caplog.records)
    # one record bigger than the whole bound is still kept: the newest is never dropped
    box.max_bytes = size // 2
    box.put(record(7))
    await box.flush()
    assert [json.loads((tmp_path / "ob" / n).read_text())["id"]
            for n in files(tmp_path / "ob")] == [record(7)["id"]]
    await box.aclose()


def test_the_daemon_gives_the_outbox_both_bounds(tmp_path: Path) -> None:
    settings = config.parse({
        "realtime": {"url": "ws://127.0.0.1:9/v1/realtime"},
        "audio": {"backend": "file", "input": {"file": str(QUESTION_WAV)},
                  "output": {"file": str(tmp_path / "out.wav")}},
        "transcripts": {"sink": "jsonl", "jsonl": {"path": str(tmp_path / "t.jsonl")},
                        "outbox_dir": str(tmp_path / "ob"), "max_records": 7,
                        "max_bytes": 12_345, "retry_max_s": 9}}, environ={})
    box = Supervisor(settings).outbox
    assert box is not None
    assert (box.max_records, box.max_bytes, box.retry_max_s) == (7, 12_345, 9)


class EvictingSink(ScriptedSink):
    """While the first record is out for delivery the conversation goes on: two more
    records are put, so the bound drops the very file being delivered."""

    def __init__(self, box: Outbox, *answers: Outcome) -> None:
        super().__init__(*answers)
        self.box = box

    async def deliver(self, rec: dict[str, Any]) -> Result:
        if not self.calls:
            self.box.put(record(101))
            self.box.put(record(102))
            await self.box.flush()
        return await super().deliver(rec)


@pytest.mark.parametrize("answer", [Outcome.REJECTED, Outcome.DELIVERED])
async def test_a_record_dropped_by_the_bound_while_out_for_delivery(
        tmp_path: Path, answer: Outcome) -> None:
    """The delivery loop finds its file gone (rejected: nothing to move aside; delivered:
    nothing to remove) and goes on. A rejected record used to raise FileNotFoundError out
    of run(), which ends the daemon; so did a file dropped between picking and loading."""
    box = Outbox(tmp_path / "ob", None, max_records=1)
    box.sink = sink = EvictingSink(box, answer, answer)
    box.open()
    box.put(record(1))
    await box.flush()
    [first] = files(tmp_path / "ob")  # record 1's file, out for delivery below
    await drain(box)
    assert sink.calls[0] == record(1)["id"]
    assert box.dropped == 2  # record 1, then 101
    assert sink.calls[1:] == [record(102)["id"]]  # the loop went on to what was left
    assert files(tmp_path / "ob") == []
    assert box._load(tmp_path / "ob" / first) is None  # its file is gone, and that is no error
    await box.aclose()


async def test_torn_and_corrupt_files_are_moved_aside_at_start(tmp_path: Path) -> None:
    d = tmp_path / "ob"
    d.mkdir()
    (d / ".tmp-00000000000000000001-000001").write_bytes(b'{"id": "half')  # power cut
    (d / "00000000000000000002-000001.json").write_bytes(b'{"id": "trunc')  # torn
    (d / "00000000000000000003-000001.json").write_text(json.dumps(record(3)))
    sink = ScriptedSink()
    box = Outbox(d, sink)
    box.open()
    assert not any(n.startswith(".tmp-") for n in os.listdir(d))
    await drain(box)
    assert sink.calls == [record(3)["id"]]
    assert files(d / "corrupt") == ["00000000000000000002-000001.json"]
    assert box.corrupt == 1
    await box.aclose()


async def test_stop_leaves_pending_on_disk_and_a_new_outbox_resumes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "ob", ScriptedSink(*[Outcome.RETRY] * 100), retry_min_s=0.01)
    box.open()
    box.put(record(1))
    task = asyncio.create_task(box.run())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await box.aclose()
    assert box.pending == 1
    sink = ScriptedSink()
    box2 = Outbox(tmp_path / "ob", sink)
    box2.open()
    await drain(box2)
    assert sink.calls == [record(1)["id"]]
    await box2.aclose()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a full SD card, for real."""
    d = tmp_path / "tiny"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)],
                      capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


async def test_a_full_disk_keeps_records_in_memory_until_space_returns(
        tiny_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = ScriptedSink()
    box = Outbox(tiny_disk / "ob", sink)
    box.open()
    filler = tiny_disk / "filler"
    with filler.open("wb", buffering=0) as f:  # fill the disk to the last byte
        with pytest.raises(OSError) as full:
            while True:
                f.write(b"x" * 512)
    assert full.value.errno == errno.ENOSPC
    with caplog.at_level(logging.ERROR):
        box.put(record(1))
        box.put(record(2))
        await box.flush()
    assert box.pending == 2  # kept in memory, not lost
    errors = [r.message for r in caplog.records if "cannot save transcript" in r.message]
    assert len(errors) == 1 and "the disk is full" in errors[0]
    filler.unlink()  # space again: the records are written and delivered
    task = asyncio.create_task(box.run())
    await asyncio.wait_for(box.idle.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.calls == [record(1)["id"], record(2)["id"]]
    await box.aclose()


async def test_records_the_disk_still_refuses_at_stop_are_named_in_the_log(
        tiny_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tiny_disk / "ob", ScriptedSink())
    box.open()
    with (tiny_disk / "filler").open("wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"x" * 512)
    box.put(record(1))
    await box.flush()
    with caplog.at_level(logging.ERROR):
        await box.aclose()
    lost = [r.message for r in caplog.records if "lost at this stop" in r.message]
    assert len(lost) == 1 and record(1)["id"] in lost[0], caplog.text


async def test_jsonl_through_the_outbox_is_once_per_id(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    sink = JsonlSink(path)
    for _ in range(2):  # the outbox retried after an answer it did not see
        assert (await sink.deliver(record(1, text="Grüße, 東京"))).outcome is \
            Outcome.DELIVERED
    assert (await sink.deliver(record(2))).outcome is Outcome.DELIVERED
    await sink.aclose()
    # a crash after the append, before the outbox removed its file: the restarted daemon
    # has a new sink, which learns from the file's tail what is already there
    restarted = JsonlSink(path)
    for n in (1, 2, 3):
        assert (await restarted.deliver(record(n))).outcome is Outcome.DELIVERED
    await restarted.aclose()
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [x["id"] for x in lines] == [record(n)["id"] for n in (1, 2, 3)]
    assert lines[0]["text"] == "Grüße, 東京"


# ------------------------------------------------------------------ real backends


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh test installs it)")
    with postgres() as dsn:
        yield dsn


def fresh_conversation() -> str:
    return str(uuid.uuid4())


async def test_postgres_sink_writes_the_seed_tables(pg_dsn: str) -> None:
    conv = fresh_conversation()
    sink = PostgresSink(Secret(pg_dsn), timeout_s=5, device_id="kitchen", agent_id="agent-1")
    recs = [record(10, "user", "Wie spät ist es?", conv),
            record(11, "assistant", "Es ist zwölf Uhr.", conv)]
    for r in recs + recs:  # the second round is a redelivery after a crash
        assert (await sink.deliver(r)).outcome is Outcome.DELIVERED
    await sink.aclose()
    assert rows(pg_dsn, f"select agent_id, device_id from conversations where id = '{conv}'"
                ) == [("agent-1", "kitchen")]
    got = rows(pg_dsn, "select id::text, role, content, metadata from chat_messages_v2 "
                       f"where conversation_id = '{conv}' order by created_at")
    assert [(g[0], g[1], g[2]) for g in got] == [(r["id"], r["role"], r["text"])
                                                for r in recs]
    assert got[0][3]["input_method"] == "realtime_voice" and "model" in got[0][3]
    assert got[1][3]["voice"] == "marin" and "model" in got[1][3]


async def test_postgres_sink_retries_while_the_database_is_down(tmp_path: Path) -> None:
    sink = PostgresSink(Secret("postgresql://postgres@127.0.0.1:9/postgres"), timeout_s=1,
                        device_id="kitchen", agent_id=None)
    res = await sink.deliver(record(1))
    assert res.outcome is Outcome.RETRY and "127.0.0.1:9" not in res.reason.replace(
        "port 9", "")  # the reason is logged: no DSN in it
    await sink.aclose()


def admin(dsn: str, *sql: str) -> None:
    """Run statements outside a transaction (CREATE DATABASE, roles)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in sql:
            conn.execute(statement.encode())


def with_path(dsn: str, user: str, database: str) -> str:
    return dsn.replace("postgres@", f"{user}@").rsplit("/", 1)[0] + f"/{database}"


async def test_postgres_errors_keep_fixable_records_and_reject_bad_ones(pg_dsn: str) -> None:
    """A missing schema or a role that may not insert is the operator's to fix: keep the
    record (retry). A record the schema refuses will never fit: set it aside."""
    admin(pg_dsn, "drop database if exists bare", "create database bare",
          "drop role if exists reader", "create role reader login")
    admin(with_path(pg_dsn, "postgres", "bare"), "grant usage on schema public to reader")
    bare = PostgresSink(Secret(with_path(pg_dsn, "postgres", "bare")), timeout_s=5,
                        device_id="kitchen", agent_id=None)
    res = await bare.deliver(record(30))
    assert res.outcome is Outcome.RETRY and "UndefinedTable" in res.reason, res
    assert "schema.sql" in res.reason
    await bare.aclose()

    reader = PostgresSink(Secret(with_path(pg_dsn, "reader", "postgres")), timeout_s=5,
                          device_id="kitchen", agent_id=None)
    res = await reader.deliver(record(31))
    assert res.outcome is Outcome.RETRY and "InsufficientPrivilege" in res.reason, res
    await reader.aclose()

    sink = PostgresSink(Secret(pg_dsn), timeout_s=5, device_id="kitchen", agent_id=None)
    conv = fresh_conversation()
    bad_role = record(32, conversation=conv) | {"role": "system"}  # the check constraint
    res = await sink.deliver(bad_role)
    assert res.outcome is Outcome.REJECTED and "CheckViolation" in res.reason, res
    bad_id = record(33, conversation=conv) | {"id": "not-a-uuid"}
    res = await sink.deliver(bad_id)
    assert res.outcome is Outcome.REJECTED and "InvalidTextRepresentation" in res.reason, res
    # the same connection goes on: a good record after the bad ones is written
    assert (await sink.deliver(record(34, conversation=conv))).outcome is Outcome.DELIVERED
    await sink.aclose()
    assert rows(pg_dsn, "select id::text from chat_messages_v2 "
                        f"where conversation_id = '{conv}'") == [(record(34)["id"],)]


async def test_a_postgres_insert_that_hangs_is_given_up_after_the_timeout(
        pg_dsn: str) -> None:
    """A table locked by someone else (a migration, a stuck transaction): the attempt
    ends after transcripts.timeout_s and the record is kept; once the lock is gone, the
    same sink delivers it."""
    import psycopg

    sink = PostgresSink(Secret(pg_dsn), timeout_s=0.5, device_id="kitchen", agent_id=None)
    rec = record(40, conversation=fresh_conversation())
    locker = await psycopg.AsyncConnection.connect(pg_dsn)
    try:
        await locker.execute(b"lock table chat_messages_v2 in access exclusive mode")
        res = await asyncio.wait_for(sink.deliver(rec), TIMEOUT)
        assert res.outcome is Outcome.RETRY, res
        assert "0.5 s" in res.reason or "statement timeout" in res.reason, res
    finally:
        await locker.rollback()
        await locker.close()
    assert (await sink.deliver(rec)).outcome is Outcome.DELIVERED
    await sink.aclose()
    assert rows(pg_dsn, f"select count(*) from chat_messages_v2 where id = '{rec['id']}'"
                ) == [(1,)]


@pytest_asyncio.fixture
async def postgrest(pg_dsn: str) -> AsyncIterator[tuple[str, Any]]:
    app = postgrest_app(pg_dsn, "service-key")
    runner, url = await serve_app(app)
    yield url, app
    await runner.cleanup()


async def test_supabase_sink_through_postgrest_into_real_tables(
        pg_dsn: str, postgrest: tuple[str, Any]) -> None:
    url, app = postgrest
    conv = fresh_conversation()
    sink = SupabaseSink(url, key=Secret("service-key"), timeout_s=5, device_id="kitchen",
                        agent_id=None)
    recs = [record(20, "user", "日本語で話して", conv), record(21, "assistant", "はい。", conv)]
    for r in recs:
        assert (await sink.deliver(r)).outcome is Outcome.DELIVERED
    sink2 = SupabaseSink(url, key=Secret("service-key"), timeout_s=5, device_id="kitchen",
                         agent_id=None)  # a restarted daemon redelivers
    assert (await sink2.deliver(recs[1])).outcome is Outcome.DELIVERED
    await sink.aclose()
    await sink2.aclose()
    got = rows(pg_dsn, "select content from chat_messages_v2 "
                       f"where conversation_id = '{conv}' order by created_at")
    assert got == [("日本語で話して",), ("はい。",)]
    tables = [t for t, _ in app[CALLS]]
    assert tables[:2] == ["conversations", "chat_messages_v2"]  # the conversation first
    headers = app[CALLS][0][1]
    assert headers["apikey"] == "service-key" and "ignore-duplicates" in headers["Prefer"]
    bad = SupabaseSink(url, key=Secret("wrong"), timeout_s=5, device_id="k", agent_id=None)
    assert (await bad.deliver(record(22, conversation=fresh_conversation()))).outcome is \
        Outcome.RETRY  # a wrong key is fixable: keep the record
    await bad.aclose()


# what each answer means for the record: 409 is "already there" (an earlier attempt got
# through), 408 and 429 are the backend's load, 404 a wrong URL or a missing table: both
# fixable without touching the record, so it is kept; other 4xx reject the record itself
HTTP_OUTCOMES = [(200, Outcome.DELIVERED), (201, Outcome.DELIVERED), (204, Outcome.DELIVERED),
                 (409, Outcome.DELIVERED), (400, Outcome.REJECTED), (422, Outcome.REJECTED),
                 (401, Outcome.RETRY), (403, Outcome.RETRY), (404, Outcome.RETRY),
                 (408, Outcome.RETRY), (429, Outcome.RETRY), (500, Outcome.RETRY),
                 (503, Outcome.RETRY)]


@pytest_asyncio.fixture
async def answering() -> AsyncIterator[tuple[str, list[int]]]:
    """An HTTP server that answers every POST with the status the test puts first."""
    from aiohttp import web

    status: list[int] = [200]

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"message": f"status {status[0]}"}, status=status[0])

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner, url = await serve_app(app)
    yield url, status
    await runner.cleanup()


@pytest.mark.parametrize(("status", "outcome"), HTTP_OUTCOMES,
                         ids=[str(s) for s, _ in HTTP_OUTCOMES])
async def test_http_sinks_map_each_status(answering: tuple[str, list[int]], status: int,
                                          outcome: Outcome) -> None:
    url, answer = answering
    answer[0] = status
    webhook = WebhookSink(url + "/hook", token=None, timeout_s=5)
    supabase = SupabaseSink(url, key=Secret("k"), timeout_s=5, device_id="kitchen",
                            agent_id=None)
    try:
        for sink in (webhook, supabase):
            res = await sink.deliver(record(1))
            assert res.outcome is outcome, (sink.name, res)
            if outcome is not Outcome.DELIVERED:
                assert res.reason.startswith(f"HTTP {status}: "), res.reason
    finally:
        await webhook.aclose()
        await supabase.aclose()


async def test_webhook_sink_against_a_flaky_server(tmp_path: Path) -> None:
    poison = record(99, text="poison")
    hook = FlakyWebhook(seed=3, token="tok", slow_s=1.5,
                        poison=lambda r: r["id"] == poison["id"])
    url = await hook.start()
    try:
        sink = WebhookSink(url, token=Secret("tok"), timeout_s=0.5)
        box = Outbox(tmp_path / "ob", sink, retry_min_s=0.01, retry_max_s=0.1)
        box.open()
        recs = [record(n) for n in range(30)] + [poison]
        for r in recs:
            box.put(r)
        await box.flush()
        task = asyncio.create_task(box.run())
        await asyncio.wait_for(box.idle.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await box.aclose()
        assert set(hook.records) == {r["id"] for r in recs[:30]}
        outcomes = {what.split()[0] for _, what in hook.seen}
        assert {"500", "dropped", "slow", "200"} <= outcomes  # every failure happened
        rejected = [json.loads(p.read_text()) for p in (tmp_path / "ob" / "rejected").iterdir()]
        assert [r["id"] for r in rejected] == [poison["id"]]
        assert hook.records[recs[0]["id"]] == recs[0]  # the contract's JSON, unchanged
    finally:
        await hook.stop()


async def test_a_reply_cut_off_by_a_crash_survives_as_its_draft(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "ob", None)
    box.open()
    reply = record(5, "assistant", "It will be sunny.")
    box.put_draft(reply)  # the words arrived; the audio was still playing ...
    assert box.pending == 0  # a draft is not a record waiting for delivery, even in flight
    await box.flush()
    assert files(tmp_path / "ob" / "drafts") == [f"{reply['id']}.json"]
    assert box.pending == 0
    await box.aclose()  # ... when the power went
    sink = ScriptedSink()
    box = Outbox(tmp_path / "ob", sink)
    box.open()
    await drain(box)
    assert sink.calls == [reply["id"]]
    assert files(tmp_path / "ob" / "drafts") == []
    await box.aclose()


async def test_the_final_record_replaces_its_draft(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "ob", None)
    box.open()
    reply = record(6, "assistant", "Done.")
    box.put_draft(reply)
    box.put(reply)
    await box.flush()
    assert files(tmp_path / "ob" / "drafts") == [] and box.pending == 1
    await box.aclose()


async def test_pending_counts_a_record_once_while_it_lands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record on disk whose write the event loop has not yet seen finish was counted twice
    (on disk, and as a write in flight): status said 2 pending with one record, and the
    SIGTERM test stopped the daemon before the reply's record existed (CI, stop 27)."""
    import threading

    import voiced.outbox as ob

    landed, release = threading.Event(), threading.Event()
    real_fsync_dir = ob._fsync_dir

    def held_fsync_dir(path: Path) -> None:  # the record is in place; hold the worker here
        real_fsync_dir(path)
        if path == tmp_path / "ob":
            landed.set()
            release.wait(TIMEOUT)

    monkeypatch.setattr(ob, "_fsync_dir", held_fsync_dir)
    box = Outbox(tmp_path / "ob", None)
    box.open()
    box.put(record(1))
    assert await asyncio.to_thread(landed.wait, TIMEOUT)
    try:
        assert len(files(tmp_path / "ob")) == 1
        assert box.pending == 1
    finally:
        release.set()
    await box.flush()
    assert box.pending == 1
    await box.aclose()


async def test_a_record_on_disk_is_not_also_kept_in_memory_when_a_later_step_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory's fsync failing after the record was renamed into place kept the record
    in memory as well: it would have been written and delivered twice."""
    import voiced.outbox as ob

    real_fsync_dir = ob._fsync_dir

    def failing_fsync_dir(path: Path) -> None:
        if path == tmp_path / "ob":
            raise OSError(errno.EIO, "Input/output error")
        real_fsync_dir(path)

    box = Outbox(tmp_path / "ob", None)
    box.open()
    monkeypatch.setattr(ob, "_fsync_dir", failing_fsync_dir)
    box.put(record(1))
    await box.flush()
    assert len(files(tmp_path / "ob")) == 1
    assert box.pending == 1
    await box.aclose()
