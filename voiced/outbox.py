"""The durable transcript outbox: every record reaches disk first, then the sink.

One JSON file per record in ``transcripts.outbox_dir``, written to a temp file, fsynced,
renamed, and the directory fsynced, so a power cut leaves either the whole record or
nothing. A delivery task sends records oldest first and removes a file only after the
sink accepted it; rejected records move to ``rejected/``, unreadable ones to
``corrupt/``. Writes run on one worker thread so a slow SD card never stalls the audio.

An assistant transcript arrives before its audio has finished playing, and its record
(which says how much was heard) only when playback ends. Meanwhile a *draft* of it waits
in ``drafts/``; the record replaces it. A draft still there at start-up (the device died
mid-reply) becomes the record, with ``heard_ms`` unknown, so the words are not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from voiced.threads import name_this_thread

logger = logging.getLogger(__name__)


class Outcome(Enum):
    """What a sink did with a record."""

    DELIVERED = "delivered"  # 2xx, 409, or already there
    REJECTED = "rejected"  # the backend will never take it (other 4xx, bad data)
    RETRY = "retry"  # 5xx, timeout, connection error: try again later


@dataclass(frozen=True, slots=True)
class Result:
    """A sink's answer, with a reason for logs."""

    outcome: Outcome
    reason: str = ""


class Sink(Protocol):
    """Where records go: one call per record, idempotent by ``record["id"]``."""

    name: str

    async def deliver(self, record: dict[str, Any]) -> Result:
        """Try to deliver; never raises for backend trouble (returns RETRY)."""

    async def aclose(self) -> None:
        """Release connections."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    """The spool directory plus its delivery loop.

    Args:
        directory: ``transcripts.outbox_dir``.
        sink: where records go (None: records are only kept on disk).
        max_records, max_bytes: bounds; over them the oldest records are dropped.
        retry_max_s: the longest wait between delivery attempts.
        rand: jitter source (tests pass a fixed one).
    """

    def __init__(self, directory: Path, sink: Sink | None, *, max_records: int = 10_000,
                 max_bytes: int = 50_000_000, retry_min_s: float = 1.0,
                 retry_max_s: float = 300.0, rand: Callable[[], float] = random.random
                 ) -> None:
        self.dir = directory
        self.sink = sink
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.rand = rand
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox",
                                      initializer=name_this_thread,
                                      initargs=("voiced-outbox",))
        self._writes: set[asyncio.Future[None]] = set()  # records on their way to disk
        self._draft_writes: set[asyncio.Future[None]] = set()  # drafts: not pending delivery
        self._unsaved: list[dict[str, Any]] = []  # records the disk refused (ENOSPC)
        self._wake = asyncio.Event()
        self.idle = asyncio.Event()
        """Set while nothing is pending (the demo and tests wait on it)."""
        self._seq = 0
        self._disk_error_logged = False
        self.delivered = 0
        self.rejected = 0
        self.dropped = 0
        self.corrupt = 0

    # ------------------------------------------------------------------ set-up

    def open(self) -> None:
        """Create the directories; move aside half-written files from a crash.

        Raises:
            OSError: the directory cannot be created (the caller reports it).
        """
        for sub in ("", "rejected", "corrupt", "drafts"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True, mode=0o750)
        for tmp in [*self.dir.glob(".tmp-*"), *(self.dir / "drafts").glob(".tmp-*")]:
            logger.warning("outbox: removing %s, a record half-written when the power "
                           "went (it was never acknowledged)", tmp.name)
            tmp.unlink()
        self._promote_drafts()
        pending = self.pending
        if pending:
            logger.info("outbox: %d transcript record(s) waiting from before", pending)

    @property
    def pending(self) -> int:
        """Records not yet accepted by the sink (on disk or waiting for disk space)."""
        try:
            on_disk = sum(1 for p in self.dir.iterdir() if p.suffix == ".json")
        except OSError:
            on_disk = 0
        return on_disk + len(self._unsaved) + len(self._writes)

    # ------------------------------------------------------------------ writing

    def put(self, record: dict[str, Any]) -> None:
        """Queue ``record`` for a durable write (on the worker thread), then delivery."""
        loop = asyncio.get_running_loop()
        self.idle.clear()
        fut = asyncio.wrap_future(self._io.submit(self._write, record), loop=loop)
        self._writes.add(fut)
        fut.add_done_callback(self._written)

    def _written(self, fut: asyncio.Future[None]) -> None:
        self._writes.discard(fut)
        self._wake.set()

    def _name(self) -> str:
        # time first, so that a directory listing sorted by name is oldest first
        self._seq += 1
        return f"{time.time_ns():020d}-{self._seq:06d}"

    def _write(self, record: dict[str, Any]) -> None:
        """Write one record durably (worker thread); on failure keep it in memory."""
        data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        name = self._name()
        tmp = self.dir / f".tmp-{name}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / f"{name}.json")
            _fsync_dir(self.dir)
            self._disk_error_logged = False
            self._drop_draft(record.get("id"))  # the record is safe: its draft can go
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._unsaved.append(record)
            if not self._disk_error_logged:
                self._disk_error_logged = True
                what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                logger.error("outbox: cannot save transcript %s to %s: %s; keeping it in "
                             "memory and retrying", record.get("id"), self.dir, what)
            return
        self._enforce_bounds()

    def put_draft(self, record: dict[str, Any]) -> None:
        """Keep an assistant record durably until its final version is :meth:`put`."""
        loop = asyncio.get_running_loop()
        fut = asyncio.wrap_future(self._io.submit(self._write_draft, record), loop=loop)
        self._draft_writes.add(fut)
        fut.add_done_callback(self._draft_writes.discard)

    def _write_draft(self, record: dict[str, Any]) -> None:
        drafts = self.dir / "drafts"
        tmp = drafts / f".tmp-{record['id']}"
        try:
            with open(tmp, "wb") as f:
                f.write(json.dumps(record, ensure_ascii=False).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, drafts / f"{record['id']}.json")
            _fsync_dir(drafts)
        except OSError as e:  # the final record will still be written (or kept in memory)
            with contextlib.suppress(OSError):
                tmp.unlink()
            logger.debug("outbox: draft %s not saved: %s", record.get("id"), e)

    def _drop_draft(self, record_id: object) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "drafts" / f"{record_id}.json").unlink()

    def _promote_drafts(self) -> None:
        """Drafts left by a crash become records: the words, with heard_ms unknown."""
        for path in sorted((self.dir / "drafts").glob("*.json")):
            try:
                record = json.loads(path.read_bytes())
                record["metadata"]["playback"] = "unknown: the device stopped while playing"
            except (ValueError, KeyError, TypeError) as e:
                os.replace(path, self.dir / "corrupt" / path.name)
                logger.error("outbox: draft %s is damaged (%s); moved to corrupt/",
                             path.name, e)
                continue
            logger.warning("outbox: recovering transcript %s, cut off mid-reply by a "
                           "restart", record.get("id"))
            self._write(record)

    def _enforce_bounds(self) -> None:
        files = sorted(p for p in self.dir.iterdir() if p.suffix == ".json")
        total = 0
        sizes = []
        for p in files:
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                size = 0
            sizes.append(size)
            total += size
        drop = 0
        while len(files) - drop > self.max_records or (total > self.max_bytes
                                                        and drop < len(files) - 1):
            total -= sizes[drop]
            with contextlib.suppress(FileNotFoundError):
                files[drop].unlink()
            drop += 1
        if drop:
            self.dropped += drop
            logger.warning("outbox: over its bound (%d records / %d bytes): dropped the %d "
                           "oldest transcript record(s)", self.max_records, self.max_bytes,
                           drop)

    def _retry_unsaved(self) -> None:
        records, self._unsaved = self._unsaved, []
        for r in records:
            self._write(r)

    async def flush(self) -> None:
        """Wait until every record handed to :meth:`put` is on disk (or kept in memory).

        Cancelling a caller of flush() never cancels the writes it waits for: others may
        be waiting for them too (the relay's connections share one spool), and a queued
        write that is cancelled never runs.
        """
        if self._writes or self._draft_writes:
            await asyncio.gather(*(asyncio.shield(f) for f in (*self._writes,
                                                               *self._draft_writes)),
                                 return_exceptions=True)

    # ------------------------------------------------------------------ delivery

    def _oldest(self) -> Path | None:
        try:
            files = sorted(p for p in self.dir.iterdir() if p.suffix == ".json")
        except OSError:
            return None
        return files[0] if files else None

    def _load(self, path: Path) -> dict[str, Any] | None:
        """The record in ``path``, or None.

        None when it is damaged (moved aside) or already gone (dropped by the bound while
        it waited, and counted in ``dropped`` there).
        """
        try:
            record = json.loads(path.read_bytes())
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise ValueError("not a transcript record")
            return record
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as e:
            self.corrupt += 1
            dest = self.dir / "corrupt" / path.name
            if self._move(path, dest):
                logger.error("outbox: %s is damaged (%s); moved to %s", path.name, e, dest)
            return None

    def _move(self, path: Path, dest: Path) -> bool:
        """Move a record aside; False when the bound dropped it meanwhile."""
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return False
        _fsync_dir(dest.parent)
        return True

    def _remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _fsync_dir(self.dir)

    async def run(self) -> None:
        """Deliver forever, oldest first, with jittered exponential backoff on failure."""
        attempts = 0
        first_failure_logged = False
        loop = asyncio.get_running_loop()
        while True:
            if self._unsaved:
                await loop.run_in_executor(self._io, self._retry_unsaved)
            path = await loop.run_in_executor(self._io, self._oldest)
            if path is None or self.sink is None:
                self._wake.clear()
                if path is None and not self._writes and not self._unsaved:
                    self.idle.set()
                timeout = 30.0 if self._unsaved else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            record = await loop.run_in_executor(self._io, self._load, path)
            if record is None:
                continue
            result = await self.sink.deliver(record)
            if result.outcome is Outcome.DELIVERED:
                await loop.run_in_executor(self._io, self._remove, path)
                self.delivered += 1
                if attempts:
                    logger.info("outbox: %s reachable again; delivering", self.sink.name)
                attempts = 0
                first_failure_logged = False
                continue
            if result.outcome is Outcome.REJECTED:
                self.rejected += 1
                dest = self.dir / "rejected" / path.name
                kept = await loop.run_in_executor(self._io, self._move, path, dest)
                logger.error("outbox: %s rejected transcript %s (%s); %s", self.sink.name,
                             record["id"], result.reason, f"kept in {dest}" if kept else
                             "the outbox's bound had already dropped it")
                continue
            base = min(self.retry_max_s, self.retry_min_s * 2 ** min(attempts, 20))
            delay = base * (0.5 + 0.5 * self.rand())
            attempts += 1
            log = logger.debug if first_failure_logged else logger.warning
            first_failure_logged = True
            log("outbox: %s: %s; %d record(s) waiting, retrying in %.0f s", self.sink.name,
                result.reason, self.pending, delay)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Let pending writes reach disk, then release the sink and the worker thread.

        Records the disk refused get one last try; those it still refuses are lost with
        the process, and the log says which (their words are in the journal already).
        """
        await self.flush()
        if self._unsaved:
            await asyncio.get_running_loop().run_in_executor(self._io, self._retry_unsaved)
        if self._unsaved:
            logger.error("outbox: %d transcript record(s) the disk refused are lost at this "
                         "stop: %s", len(self._unsaved),
                         ", ".join(str(r.get("id")) for r in self._unsaved))
        if self.sink is not None:
            await self.sink.aclose()
        self._io.shutdown(wait=True)
