"""The outbox against files bad luck or an attacker leaves in it, and the jsonl sink on
a full disk. One bad file never ends the daemon: it moves aside and delivery goes on.

Every test here failed on 82fde82.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, TIMEOUT
from tests.test_bad_configs import _without_root_file_access
from tests.test_transcript_delivery import (  # noqa: F401 - tiny_disk is a fixture
    ScriptedSink,
    drain,
    files,
    record,
    tiny_disk,
)
from voiced import guard
from voiced.outbox import Outbox, Outcome, Result
from voiced.sinks.jsonl import JsonlSink


def name(n: int) -> str:
    return f"{n:020d}-000001.json"


def bad_files(d: Path) -> dict[str, str]:
    """One of each kind of bad file, between good records; name -> what it is."""
    d.mkdir(parents=True, exist_ok=True)
    (d / name(1)).write_text(json.dumps(record(1)))
    kinds: dict[str, str] = {}

    def bad(n: int, what: str) -> Path:
        kinds[name(n)] = what
        return d / name(n)

    bad(2, "a directory").mkdir()
    os.mkfifo(bad(3, "a named pipe"))
    bad(4, "a dangling symlink").symlink_to(d / "nowhere")
    bad(5, "nested 100,000 deep").write_text('{"id": "x", "m": ' + "[" * 100_000 + "]" * 100_000
                                             + "}")
    deep = record(6)
    inner: dict[str, Any] = deep["metadata"]
    for _ in range(200):
        inner["x"] = {}
        inner = inner["x"]
    bad(6, "metadata 200 deep").write_text(json.dumps(deep))
    no_cid = record(7)
    del no_cid["conversation_id"]
    bad(7, "no conversation_id").write_text(json.dumps(no_cid))
    bad(8, "invalid UTF-8").write_bytes(json.dumps(record(8)).encode()[:-10] + b"\xff\xfe\"}")
    bad(9, "a list").write_text("[1, 2]")
    bad(10, "4 MB").write_text(json.dumps({**record(10), "text": "x" * 4_000_000}))
    bad(11, "text is a number").write_text(json.dumps({**record(11), "text": 5}))
    (d / name(12)).write_text(json.dumps(record(12)))
    return kinds


async def test_one_bad_file_of_any_kind_moves_aside_and_delivery_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard.reset_for_tests()
    d = tmp_path / "ob"
    kinds = bad_files(d)
    sink = ScriptedSink()
    box = Outbox(d, sink)
    box.open()
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(drain(box), TIMEOUT)
    await box.aclose()
    assert sink.calls == [record(1)["id"], record(12)["id"]]
    assert sorted(os.listdir(d / "corrupt")) == sorted(kinds), os.listdir(d)
    assert files(d) == []
    for n, what in kinds.items():  # each is named in the log with why
        assert any(n in r.getMessage() for r in caplog.records), (what, caplog.text)
    assert "Traceback" not in caplog.text


async def test_a_record_with_a_lone_surrogate_is_repaired_not_lost(tmp_path: Path) -> None:
    """An emoji cut in half by a relay leaves a lone surrogate: the record is written and
    delivered with U+FFFD in its place (it was lost: UnicodeEncodeError in the writer);
    one already on disk (an escaped surrogate in the JSON) too."""
    d = tmp_path / "ob"
    d.mkdir()
    (d / name(1)).write_text('{"id": "ID", "conversation_id": "c", "device_id": "k", '
                             '"role": "assistant", "text": "ok \\ud83d", "created_at": '
                             '"2026-11-24T18:03:11.402Z", "metadata": {}}'
                             .replace("ID", record(1)["id"]))
    sink = JsonlSink(tmp_path / "t.jsonl")
    box = Outbox(d, sink)
    box.open()
    box.put(record(2, text="half an emoji \ud83d and a whole one \ud83d\ude00"))
    box.put(record(3, text="nul \x00 byte"))
    await box.flush()
    await asyncio.wait_for(drain(box), TIMEOUT)
    await box.aclose()
    texts = [json.loads(x)["text"] for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert texts == ["ok \ufffd", "half an emoji \ufffd and a whole one \U0001f600",
                     "nul \ufffd byte"]


class ExplodingSink(ScriptedSink):
    """A sink with a bug for one record: it raises (the Supabase sink did, KeyError, for a
    record without conversation_id; aiohttp did, ValueError, for a token with a newline)."""

    def __init__(self, bad_id: str) -> None:
        super().__init__()
        self.bad_id = bad_id

    async def deliver(self, rec: dict[str, Any]) -> Result:
        if rec["id"] == self.bad_id:
            self.calls.append(rec["id"])
            raise RuntimeError("a bug in the sink")
        return await super().deliver(rec)


async def test_a_sink_that_raises_is_contained_retried_then_the_record_set_aside(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard.reset_for_tests()
    d = tmp_path / "ob"
    sink = ExplodingSink(record(1)["id"])
    box = Outbox(d, sink, retry_min_s=0.01, retry_max_s=0.02)
    box.open()
    box.put(record(1))
    box.put(record(2))
    await box.flush()
    await asyncio.wait_for(drain(box), TIMEOUT)
    await box.aclose()
    assert sink.calls == [record(1)["id"]] * 3 + [record(2)["id"]]
    assert len(files(d / "rejected")) == 1 and files(d) == []
    assert guard.faults["outbox delivery"] == 3
    assert "a bug in the sink" in caplog.text


async def test_drafts_are_bounded(tmp_path: Path) -> None:
    """Replies that never finish (a hostile server) left a draft file each (5,000 in the
    review), each promoted to a record at the next start."""
    box = Outbox(tmp_path / "ob", None, max_drafts=20)
    box.open()
    for n in range(300):
        box.put_draft(record(n, role="assistant"))
    await box.flush()
    await box.aclose()
    drafts = files(tmp_path / "ob" / "drafts")
    assert len(drafts) == 20
    kept = {json.loads((tmp_path / "ob" / "drafts" / f).read_text())["id"] for f in drafts}
    assert kept == {record(n, role="assistant")["id"] for n in range(280, 300)}
    again = Outbox(tmp_path / "ob", None, max_drafts=20)
    again.open()
    assert again.pending == 20
    await again.aclose()


async def test_outbox_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        box = Outbox(tmp_path / "ob", None)
        box.open()
        box.put(record(1))
        box.put_draft(record(2, role="assistant"))
        await box.flush()
        await box.aclose()
    finally:
        os.umask(old)
    d = tmp_path / "ob"
    for sub in ("", "drafts", "rejected", "corrupt"):
        assert stat.S_IMODE((d / sub).stat().st_mode) == 0o700, sub
    for f in [*d.glob("*.json"), *(d / "drafts").glob("*.json")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_an_unreadable_record_moves_aside(tmp_path: Path) -> None:
    """A record this user may not read (as root: without root's file capabilities) used
    to raise PermissionError out of the delivery loop: exit 1 at every start."""
    d = tmp_path / "ob"
    d.mkdir()
    (d / name(1)).write_text(json.dumps(record(1)))
    (d / name(2)).write_text(json.dumps(record(2)))
    (d / name(2)).chmod(0)
    (d / name(3)).write_text(json.dumps(record(3)))
    script = textwrap.dedent(f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_transcript_delivery import ScriptedSink, drain
        from voiced.outbox import Outbox
        async def main():
            sink = ScriptedSink()
            box = Outbox(__import__("pathlib").Path({str(d)!r}), sink)
            box.open()
            await drain(box)
            await box.aclose()
            print(json.dumps(sink.calls))
        asyncio.run(main())
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=TIMEOUT, check=False,
                       preexec_fn=_without_root_file_access if os.geteuid() == 0 else None)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout) == [record(1)["id"], record(3)["id"]]
    assert os.listdir(d / "corrupt") == [name(2)]
    assert "cannot be read" in p.stderr


@pytest.fixture
def full_disk(tiny_disk: Path) -> Iterator[tuple[Path, Path]]:  # noqa: F811
    """A jsonl file whose last page has 50 bytes left, on a disk with no page left."""
    path = tiny_disk / "t.jsonl"
    path.write_text("x" * 4045 + "\n")
    filler = tiny_disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 512)
        except OSError:
            pass
    yield path, filler


async def test_a_short_write_on_a_full_disk_is_not_delivered(
        full_disk: tuple[Path, Path]) -> None:
    path, filler = full_disk
    before = path.read_bytes()
    sink = JsonlSink(path)
    result = await sink.deliver(record(1, text="words " * 40))
    assert result.outcome is Outcome.RETRY, result
    assert path.read_bytes() == before  # no torn line left behind
    filler.unlink()
    assert (await sink.deliver(record(1, text="words " * 40))).outcome is Outcome.DELIVERED
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["id"] == record(1)["id"]


async def test_a_draft_is_promoted_once_whatever_its_file_name(tmp_path: Path) -> None:
    """Drafts are named by their record's id; one named otherwise (copied in by hand, or
    left by an older version) was promoted again at every start."""
    d = tmp_path / "ob"
    (d / "drafts").mkdir(parents=True)
    (d / "drafts" / "copied-by-hand.json").write_text(json.dumps(record(1, role="assistant")))
    for _ in range(2):
        box = Outbox(d, None)
        box.open()
        await box.aclose()
    assert box.pending == 1 and files(d / "drafts") == []
