"""The daemon against a hostile Realtime server or relay (tests/hostile.py).

Each bad frame class from the adversarial review (issue 17) is sent by a scriptable
loopback server to the real daemon on the file backend. The daemon must survive it, keep
its memory bounds, keep the conversation's records, and say plainly what happened. Every
test here failed on the commit before the fixes (82fde82).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIMEOUT, clean_env, voiced_cmd, write_config
from tests.hostile import (
    HostileServer,
    Peer,
    audio_delta,
    endless_reply,
    rss_kb,
    transcript_delta,
)
from tests.test_appliance import NotifySocket
from tests.test_supervisor import Harness, running
from voiced import guard
from voiced.config import Secret, Settings
from voiced.control import request
from voiced.core.effects import State

FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.2, "connect_timeout_s": 3}


@pytest.fixture(autouse=True)
def _fresh_guard() -> None:
    guard.reset_for_tests()


def user_said(text_json: str, item: str = "item_u") -> str:
    """A user transcript event whose transcript is the raw JSON string ``text_json``."""
    return ('{"type": "conversation.item.input_audio_transcription.completed", '
            f'"event_id": "ev_x", "item_id": "{item}", "content_index": 0, '
            f'"transcript": {text_json}}}')


def response_created(resp: str = "resp_1") -> dict[str, Any]:
    return {"type": "response.created", "event_id": "ev_r",
            "response": {"id": resp, "object": "realtime.response", "status": "in_progress",
                         "output": []}}


def response_done(resp: str = "resp_1", status: str = "completed") -> dict[str, Any]:
    return {"type": "response.done", "event_id": "ev_rd",
            "response": {"id": resp, "object": "realtime.response", "status": status,
                         "output": []}}


def records_in(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() \
        else []


async def delivered(h: Harness, path: Path, n: int) -> list[dict[str, Any]]:
    """Wait until the jsonl sink holds n records."""
    await h.wait(lambda: len(records_in(path)) >= n)
    return records_in(path)


# ------------------------------------------------------------------ frames that crashed


async def test_deeply_nested_frames_are_dropped_and_the_conversation_goes_on(
        tmp_path: Path) -> None:
    """Finding 2: one frame of ``"[" * 1000`` raised RecursionError out of the parser,
    which ended the task group (exit 1) on every connection."""
    async def script(peer: Peer) -> None:
        await peer.send("[" * 100_000)
        await peer.send('{"type": "error", "error": ' + '{"a": ' * 5000 + "1"
                        + "}" * 5000 + "}")
        # deep, but under the parser's own limit: nothing after it may recurse on it
        deep = '{"type": "session.updated", "session": ' + "[" * 900 + "]" * 900 + "}"
        await peer.send(deep)
        await peer.send('{"type": "x.unknown", "raw": ' + "[" * 900 + "]" * 900 + "}")
        await peer.send(user_said('"still here"'))

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime=FAST) as h:
            await h.wait(lambda: [r["text"] for r in h.records] == ["still here"])
            assert h.sup.malformed_frames >= 3
            assert len(server.peers) == 1  # not even the connection was lost
            assert h.state == State.READY
            assert h.sup.status()["faults"] == {}


async def test_an_emoji_split_across_two_deltas_survives_a_drop_and_every_reseed(
        tmp_path: Path) -> None:
    """Finding 3: a relay cut a surrogate pair across two transcript deltas, then the
    connection dropped. The record was lost, and the lone surrogates in the history made
    every re-seed abort the new connection (a reconnect storm) until a long press."""
    record_seen = asyncio.Event()

    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.send(response_created())
            await peer.send(transcript_delta('"\\ud83d"'))
            await peer.send(transcript_delta('"\\ude00 hi"'))
            await peer.send(audio_delta(b"\x00\x01" * 2400))
            await asyncio.sleep(0.05)
            peer.ws.transport.abort()  # a drop: no .done, no response.done
        elif peer.index == 1:
            await record_seen.wait()  # the reply has played and is in the history
            peer.ws.transport.abort()

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime=FAST) as h:
            await h.wait(lambda: any(r["role"] == "assistant" for r in h.records))
            record_seen.set()
            (record,) = await delivered(h, tmp_path / "t.jsonl", 1)
            assert record["text"] == "\U0001F600 hi"
            third = await server.wait_for_peer(3)
            item = (await third.wait_for("conversation.item.create"))["item"]
            assert item["content"][0]["text"] == "\U0001F600 hi"
            await h.wait(lambda: h.state == State.READY)
            await asyncio.sleep(0.5)
            assert len(server.peers) == 3  # no storm of reconnects
            assert h.sup.status()["faults"] == {}


async def test_lone_surrogates_become_replacement_characters_and_records_are_kept(
        tmp_path: Path) -> None:
    """Finding 3: a lone surrogate anywhere in server text must not reach a record or
    the history (it cannot be encoded as UTF-8: the record was lost)."""
    async def script(peer: Peer) -> None:
        await peer.send(user_said('"\\ud800 hello \\udfff"'))
        await peer.send(response_created())
        await peer.send(audio_delta(b"\x00\x01" * 480))
        await peer.send('{"type": "response.output_audio_transcript.done", "event_id": "e",'
                        ' "response_id": "resp_1", "item_id": "item_a", "output_index": 0,'
                        ' "content_index": 0, "transcript": "bye \\udc00"}')
        await peer.send('{"type": "response.output_audio.done", "event_id": "e", '
                        '"response_id": "resp_1", "item_id": "item_a", "output_index": 0, '
                        '"content_index": 0}')
        await peer.send(response_done())

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime=FAST) as h:
            records = await delivered(h, tmp_path / "t.jsonl", 2)
            assert [r["text"] for r in records] == ["\ufffd hello \ufffd", "bye \ufffd"]
            assert len(server.peers) == 1


# ------------------------------------------------------------------ memory bounds


async def test_an_endless_fast_reply_is_bounded_in_seconds_and_cancelled(
        tmp_path: Path) -> None:
    """Finding 6: an endless reply at 50x real time grew the playback queue without
    bound (+2.2 MB/s). Now the queue holds at most audio.max_queued_s; the reply is
    cancelled, what was queued plays out, and the model is told what was heard."""
    stop = asyncio.Event()

    async def script(peer: Peer) -> None:
        await endless_reply(peer, speed=50, stop=stop)

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime=FAST, audio={"max_queued_s": 1},
                           speed=4) as h:
            peer = await server.wait_for_peer(1)
            await h.wait(lambda: h.state == State.SPEAKING)
            peaks = []
            for _ in range(40):  # two seconds of an endless stream
                peaks.append(h.sup.status()["audio_queued_ms"])
                await asyncio.sleep(0.05)
            assert max(peaks) <= 1000
            await peer.wait_for("response.cancel")
            stop.set()
            await h.wait(lambda: h.state == State.READY)  # played out; not stuck
            truncate = await peer.wait_for("conversation.item.truncate")
            assert truncate["item_id"] == "item_endless"
            assert h.sup.session.counters.playback_overflows >= 1
            assert len(server.peers) == 1


async def test_megabyte_transcript_deltas_are_capped_in_bytes(tmp_path: Path) -> None:
    """Finding 6: partial transcripts were capped by count (10,000 deltas), not bytes:
    150 deltas of 1 MB held 191 MB."""
    async def script(peer: Peer) -> None:
        await peer.send(response_created())
        await peer.send(audio_delta(b"\x00\x01" * 2400))
        chunk = json.dumps("\u00e9" * (1 << 19))  # 1 MiB of UTF-8 each
        for _ in range(30):
            await peer.send(transcript_delta(chunk))
        await asyncio.sleep(0.2)
        peer.ws.transport.abort()

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime={
                **FAST, "max_transcript_bytes": 65536}) as h:
            held = []

            def sample() -> bool:
                held.append(h.sup.status()["transcript_bytes"])
                return any(r["role"] == "assistant" for r in h.records)
            await h.wait(sample)
            assert max(held) <= 65536
            text = next(r["text"] for r in h.records if r["role"] == "assistant")
            assert 60_000 <= len(text.encode()) <= 65536


async def test_items_that_never_finish_are_pruned_and_drafts_stay_bounded(
        tmp_path: Path) -> None:
    """Finding 6: items that never finish were never pruned, not even on reconnect or a
    long press: 5,000 phantom items, 5,000 draft files."""
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            for i in range(300):
                await peer.send('{"type": "response.output_audio_transcript.done", '
                                f'"event_id": "e", "response_id": "resp_{i}", '
                                f'"item_id": "item_{i}", "output_index": 0, '
                                f'"content_index": 0, "transcript": "phantom {i}"}}')
            await peer.send(user_said('"marker"'))

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime={
                **FAST, "max_pending_items": 16}) as h:
            await h.wait(lambda: any(r["text"] == "marker" for r in h.records))
            assert h.sup.status()["pending_items"] <= 16
            assert h.sup.outbox is not None
            await h.sup.outbox.flush()
            assert len(list((tmp_path / "outbox" / "drafts").glob("*.json"))) <= 16
            # no words are lost: the pruned items were recorded
            assert sum(r["text"].startswith("phantom") for r in h.records) >= 300 - 16
            h.sup._on_control("long-press")  # and a new conversation leaves none behind
            await server.wait_for_peer(2)
            await h.wait(lambda: h.sup.status()["pending_items"] == 0)
            await h.sup.outbox.flush()
            await h.wait(lambda: not list((tmp_path / "outbox" / "drafts").glob("*.json")))


async def test_a_reply_whose_response_created_was_lost_does_not_stay_speaking(
        tmp_path: Path) -> None:
    """Low: audio of a response never announced (response.created lost) left the state
    at speaking across reconnects."""
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.send(audio_delta(b"\x00\x01" * 4800, resp="resp_lost", item="it_l"))
            await asyncio.sleep(0.05)
            peer.ws.transport.abort()

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime=FAST) as h:
            await h.wait(lambda: State.SPEAKING in h.states)
            await server.wait_for_peer(2)
            await h.wait(lambda: h.state == State.READY)
            assert h.sup.status()["pending_items"] == 0


# ------------------------------------------------------------------ server text


@contextlib.contextmanager
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """systemd's side of sd_notify, for the daemon in this process."""
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    try:
        yield notify
    finally:
        notify.sock.close()


ASSIGNMENTS = ("STATUS=", "READY=", "WATCHDOG=1", "STOPPING=", "RELOADING=",
               "MONOTONIC_USEC=")


async def test_server_text_cannot_forge_status_or_log_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Finding 9: a close reason ``"bye\\nWATCHDOG=trigger"`` became its own line in the
    notify datagram; transcripts and server error messages reached the log raw."""
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.send({"type": "error", "event_id": "e", "error": {
                "type": "server_error", "code": "boom\nWATCHDOG=1",
                "message": "first line\nINFO voiced: forged " + "x" * 100_000}})
            await peer.send(user_said(json.dumps("hi\nWARNING voiced: forged\r\x1b[2J")))
            await peer.ws.close(4321, "bye\nWATCHDOG=trigger")

    caplog.set_level(logging.DEBUG)
    with notify_socket(tmp_path, monkeypatch) as datagrams:
        async with HostileServer(script) as server:
            async with running(tmp_path, server, realtime=FAST) as h:
                await server.wait_for_peer(2)
                await h.wait(lambda: h.state == State.READY)
                lines = datagrams.poll()  # one line each: a newline would start another
                assert any(line.startswith("STATUS=") for line in lines)
                for line in lines:
                    assert line.startswith(ASSIGNMENTS) and len(line) <= 400, line
                assert any("WATCHDOG=trigger" in line for line in lines)  # escaped, shown
    for rec in caplog.records:
        if rec.name.startswith("voiced"):
            msg = rec.getMessage()
            assert "\n" not in msg and "\r" not in msg and "\x1b" not in msg, msg[:200]
            assert len(msg) <= 2000, msg[:200]


async def test_malformed_frame_warnings_are_rate_limited(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Low: every malformed frame logged a warning (a flood of them, a flood of lines)."""
    async def script(peer: Peer) -> None:
        for i in range(300):
            await peer.send(f"not json {i}\n" + "y" * 5000)
        await peer.send(user_said('"done"'))

    caplog.set_level(logging.INFO)
    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime=FAST) as h:
            await h.wait(lambda: any(r["text"] == "done" for r in h.records))
            assert h.sup.malformed_frames == 300
    warned = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(warned) <= 3
    assert all(len(r.getMessage()) < 1000 for r in warned)


# ------------------------------------------------------------------ session lifetime


@pytest.mark.parametrize("expires", ["Infinity", "1e300", "NaN", "-5", "0", '"soon"',
                                     "1000"])
async def test_odd_expiry_times_break_neither_status_nor_the_rollover(
        tmp_path: Path, expires: str) -> None:
    """Finding 13: expires_at of Infinity or 1e300 broke every `voiced ctl` command for
    the session; NaN (and a time long past) started a rollover at once; a string dropped
    session.created, so the session was never configured."""
    async with HostileServer(expires_at=expires) as server:
        async with running(tmp_path, server, realtime=FAST) as h:
            await h.wait(lambda: h.state == State.READY)
            reply = await asyncio.to_thread(request, tmp_path / "ctl.sock", "status")
            assert reply["ok"] is True
            assert reply["status"]["session_expires_at"] is None
            for _ in range(3):  # the once-a-second clock, a few times over
                h.sup.session.on_tick(h.sup._now(), time.time())
                h.sup._apply(h.sup.session.take_effects())
            assert h.sup.session.standby is None
            await asyncio.sleep(0.2)
            assert len(server.peers) == 1


async def test_a_redirect_of_the_realtime_url_is_not_followed(tmp_path: Path) -> None:
    """Finding 16: a redirect on the Realtime URL was followed without re-checking the
    loopback/TLS rule. It is not followed at all now, and the status says why."""
    async with HostileServer() as target:
        async with HostileServer(redirect_to=target.url) as server:
            async with running(tmp_path, server, realtime=FAST) as h:
                await h.wait(lambda: server.attempts >= 3)
                assert target.attempts == 0
                assert h.state == State.CONNECTING
                assert "redirect" in h.sup.status()["detail"]


async def test_close_4000_mid_session_is_retried_not_fatal(tmp_path: Path) -> None:
    """Low: close 4000 from a relay at any moment stopped the unit for good."""
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await asyncio.sleep(0.1)
            await peer.ws.close(4000, "invalid_request_error.something_transient")

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime=FAST) as h:
            await server.wait_for_peer(2)
            await h.wait(lambda: h.state == State.READY and len(server.peers) == 2)


async def test_close_4000_answering_every_set_up_is_still_a_config_error(
        tmp_path: Path) -> None:
    """Repeated refusals of the set-up (after one session that worked) stop the unit."""
    from voiced.errors import ConfigError

    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await asyncio.sleep(0.1)
            peer.ws.transport.abort()

    class Refuses(HostileServer):
        async def _handle(self, ws: Any) -> None:
            if self.peers:  # every later connection: refused before it is configured
                self.peers.append(Peer(ws, len(self.peers)))
                await ws.close(4000, "invalid_request_error.invalid_model")
                return
            await super()._handle(ws)

    async with Refuses(script) as server:
        with pytest.raises(ConfigError, match="realtime.url"):
            async with running(tmp_path, server, realtime=FAST) as h:
                await h.wait(lambda: len(server.peers) >= 4)
                await asyncio.sleep(1)
        assert len(server.peers) <= 5


async def test_an_in_session_invalid_api_key_error_does_not_show_error(
        tmp_path: Path) -> None:
    """Low: an `invalid_api_key` error event in a session that works left `error` shown
    (the server closes the connection when the key is really refused)."""
    async def script(peer: Peer) -> None:
        await peer.send({"type": "error", "event_id": "e", "error": {
            "type": "invalid_request_error", "code": "invalid_api_key",
            "message": "Incorrect API key provided."}})
        await peer.send(user_said('"after"'))

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime=FAST) as h:
            await h.wait(lambda: any(r["text"] == "after" for r in h.records))
            assert State.ERROR not in h.states
            assert h.state == State.READY


async def test_an_oversized_frame_and_a_keepalive_timeout_are_told_apart(
        tmp_path: Path) -> None:
    """Low: a frame over the size limit and a keepalive timeout were both reported as
    "connection lost (1006: no close frame)"."""
    async def script(peer: Peer) -> None:
        if peer.index == 0:
            await peer.send("x" * (17 << 20))
        elif peer.index == 1:
            peer.ws.transport.pause_reading()  # no pongs: a dead peer

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime={**FAST, "keepalive_s": 0.3}) as h:
            await server.wait_for_peer(3)
            await h.wait(lambda: h.state == State.READY and len(server.peers) >= 3)
    reasons = [d for s, d in zip(h.states, h.details, strict=True) if s == State.CONNECTING]
    too_big = [d for d in reasons if "too big" in d]
    silent = [d for d in reasons if "keepalive" in d]
    assert too_big and silent, reasons
    assert not any("1006" in d for d in too_big + silent)


async def test_handshake_errors_never_show_the_api_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Finding 1 (handshake part): websockets' InvalidHeaderValue text holds
    ``Bearer <key>``; it reached the log, the status detail and STATUS=. (check-config
    refuses such a key now; this is the line of defence behind it.)"""
    key = "sk-test-HANDSHAKE-secret\nsecond line"

    def with_key(s: Settings) -> Settings:
        return dataclasses.replace(s, realtime=dataclasses.replace(
            s.realtime, api_key=Secret(key)))

    caplog.set_level(logging.DEBUG)
    with notify_socket(tmp_path, monkeypatch) as datagrams:
        async with HostileServer() as server:
            async with running(tmp_path, server, realtime=FAST, adjust=with_key) as h:
                await h.wait(lambda: h.state == State.ERROR)
                await asyncio.sleep(0.3)
                detail = h.sup.status()["detail"]
                assert "Authorization" in detail and "api key" in detail.lower(), detail
                assert server.attempts == 0  # nothing was sent
                shown = [detail, json.dumps(h.sup.status()), *datagrams.poll(),
                         *(r.getMessage() for r in caplog.records if
                           r.name.startswith("voiced")),
                         *(guard.SafeFormatter().format(r) for r in caplog.records)]
    for text in shown:
        for part in ("HANDSHAKE-secret", "second line", "Bearer sk"):
            assert part not in text, text[:300]


# ------------------------------------------------------------------ last line of defence


async def test_an_unexpected_error_while_handling_server_data_is_contained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task that handles server data has a last line of defence: a bug (injected
    here, as none is known) is counted in `faults`, the frame or effect is dropped, and
    the conversation goes on on the same connection."""
    from voiced import wire
    from voiced.core.conversation import Conversation

    real_event = Conversation.on_server_event
    real_encode = wire.encode

    def buggy_event(self: Conversation, ev: Any, now: float) -> None:
        if isinstance(ev, wire.ItemTruncated):
            raise RuntimeError("a bug in the core")
        real_event(self, ev, now)

    def buggy_encode(event: Any) -> str:
        if event.get("type") == "input_audio_buffer.clear":
            raise RuntimeError("a bug in the sender")
        return real_encode(event)

    monkeypatch.setattr(Conversation, "on_server_event", buggy_event)
    monkeypatch.setattr(wire, "encode", buggy_encode)

    async def script(peer: Peer) -> None:
        await peer.send({"type": "conversation.item.truncated", "event_id": "e",
                         "item_id": "it", "content_index": 0, "audio_end_ms": 1})
        await peer.send(user_said('"one"', item="u1"))

    async with HostileServer(script) as server:
        async with running(tmp_path, server, realtime=FAST) as h:
            await h.wait(lambda: any(r["text"] == "one" for r in h.records))
            link = h.sup._link
            assert link is not None
            link.queue.put_nowait({"type": "input_audio_buffer.clear", "event_id": "x"})
            link.queue.put_nowait({"type": "input_audio_buffer.commit", "event_id": "y"})
            await server.peers[0].wait_for("input_audio_buffer.commit")
            faults = h.sup.status()["faults"]
            assert faults.get("realtime frame") == 1, faults
            assert faults.get("realtime send") == 1, faults
            assert len(server.peers) == 1


# ------------------------------------------------------------------ the real daemon


@pytest.mark.timeout(120)
async def test_voiced_run_survives_every_bad_frame_class_with_bounded_memory(
        tmp_path: Path) -> None:
    """`voiced run` (a subprocess, the file backend) takes every bad frame class in a row,
    then an endless reply at 50x real time: it stays up, `ctl status` answers throughout,
    peak RSS stays under idle + 40 MB, and it stops cleanly."""
    go = asyncio.Event()
    stop = asyncio.Event()

    async def script(peer: Peer) -> None:
        await go.wait()
        for frame in ["[" * 100_000, b"\x00\xff binary", "{" * 50, '{"type": 5}',
                      transcript_delta('"\\ud83d"'), user_said('"\\udfff x"')]:
            await peer.send(frame)
        big = transcript_delta(json.dumps("z" * (1 << 20)))
        for _ in range(20):
            await peer.send(big)
        await peer.send({"type": "error", "event_id": "e", "error": {
            "type": "x", "code": "y", "message": "m\n" * 50_000}})
        await endless_reply(peer, speed=50, stop=stop)

    async with HostileServer(script) as server:
        cfg = write_config(tmp_path, server.url, audio={"max_queued_s": 30},
                           realtime={"max_transcript_bytes": 65536})
        proc = await asyncio.create_subprocess_exec(
            *voiced_cmd("run", "-c", str(cfg)), env=clean_env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        sock = tmp_path / "ctl.sock"

        async def status() -> dict[str, Any]:
            reply = await asyncio.to_thread(request, sock, "status")
            return dict(reply["status"])
        try:
            async def ready() -> None:
                while True:
                    with contextlib.suppress(OSError, ValueError):
                        if (await status())["state"] == "ready":
                            return
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(ready(), TIMEOUT)
            await asyncio.sleep(0.5)
            idle = rss_kb(proc.pid)
            go.set()
            peak = idle
            queued = []
            end = time.monotonic() + 10
            while time.monotonic() < end:
                peak = max(peak, rss_kb(proc.pid))
                st = await status()
                queued.append(st["audio_queued_ms"])
                await asyncio.sleep(0.1)
            stop.set()
            st = await status()
            assert st["connected"] is True and st["faults"] == {}, st
            assert st["malformed_frames"] >= 4
            assert max(queued) <= 30_000
            assert peak - idle < 40 * 1024, (idle, peak)
            assert len(server.peers) == 1
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    text = err.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text
    assert all(len(line) <= guard.LINE_LIMIT + 200 for line in text.splitlines())
    assert (tmp_path / "out.wav").stat().st_size > 0  # noqa: ASYNC240 - after the run
