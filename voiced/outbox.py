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

Every file in the directory is hostile. A record is read only from a regular file (a
FIFO, a directory or a symlink named ``*.json`` moves aside), at most
:data:`MAX_RECORD_BYTES`, and must have the contract's shape; anything else moves to
``corrupt/``, with the reason in the log. Strings are made storable on the way in and
out (an emoji cut in half becomes U+FFFD instead of losing the record). The delivery
loop is a boundary: an unexpected exception is counted (``guard.faults``) and waited out
like a failed delivery, and after :data:`FAULTS_BEFORE_REJECT` on the same record that
record moves to ``rejected/``. Records, drafts, ``rejected/`` and ``corrupt/`` are all
bounded; files are 0600 and directories 0700 whatever the umask.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, Protocol

from voiced import guard
from voiced.backoff import Backoff
from voiced.threads import name_this_thread

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES: Final = 1_000_000
"""One record file; a longer transcript is cut to fit (and says so in its metadata)."""
MAX_METADATA_DEPTH: Final = 8
FAULTS_BEFORE_REJECT: Final = 3
"""Unexpected exceptions delivering one record before it is set aside in rejected/."""
ROLES: Final = ("user", "assistant")
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


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


def record_problem(record: object) -> str | None:
    """Why ``record`` is not a transcript record of the contract (§4), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for key in ("id", "conversation_id", "device_id", "created_at", "text"):
        if not isinstance(record.get(key), str):
            return f"no {key} string"
    if record.get("role") not in ROLES:
        return "role is not user or assistant"
    if not isinstance(record.get("metadata"), dict):
        return "no metadata object"
    if _depth(record["metadata"]) > MAX_METADATA_DEPTH:
        return f"metadata nested more than {MAX_METADATA_DEPTH} deep"
    return None


def _depth(value: object) -> int:
    """How deep ``value`` nests (counted only to just past the limit)."""
    depth, level = 0, [value]
    while level and depth <= MAX_METADATA_DEPTH:
        depth += 1
        nxt: list[object] = []
        for v in level:
            if isinstance(v, dict):
                nxt += v.values()
            elif isinstance(v, list):
                nxt += v
        level = nxt
    return depth + (1 if level else 0)


def _encode(record: dict[str, Any]) -> bytes:
    """The record's file contents; a text too long for one file is cut and marked."""
    data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    if len(data) <= MAX_RECORD_BYTES:
        return data
    text = record["text"].encode()
    cut = text[:max(0, len(text) - (len(data) - MAX_RECORD_BYTES) - 1000)].decode(
        errors="ignore")
    logger.warning("outbox: transcript %s is longer than a record may be; cut to %d bytes",
                   guard.printable(record.get("id"), 80), len(cut.encode()))
    record = {**record, "text": cut, "metadata": {**record["metadata"], "truncated": True}}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new private file and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # O_CREAT's mode is cut by the umask; this is not
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        return 0


def _why(exc: BaseException) -> str:
    """What was wrong with a file, in a few words."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    if isinstance(exc, OSError):
        return f"cannot be read: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc) or type(exc).__name__


class Outbox:
    """The spool directory plus its delivery loop.

    Args:
        directory: ``transcripts.outbox_dir``.
        sink: where records go (None: records are only kept on disk).
        max_records, max_bytes: bounds; over them the oldest records are dropped. The
            same bounds hold for ``rejected/`` and ``corrupt/``.
        max_drafts: drafts kept at most (the oldest go).
        retry_max_s: the longest wait between delivery attempts.
        rand: jitter source (tests pass a fixed one).
    """

    def __init__(self, directory: Path, sink: Sink | None, *, max_records: int = 10_000,
                 max_bytes: int = 50_000_000, max_drafts: int = 50,
                 retry_min_s: float = 1.0, retry_max_s: float = 300.0,
                 rand: Callable[[], float] = random.random) -> None:
        self.dir = directory
        self.sink = sink
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_drafts = max_drafts
        self._retry = Backoff(retry_min_s, retry_max_s, rand)  # failed deliveries in a row
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox",
                                      initializer=name_this_thread,
                                      initargs=("voiced-outbox",))
        self._writes: set[asyncio.Future[None]] = set()  # records on their way to disk
        self._draft_writes: set[asyncio.Future[None]] = set()  # drafts: not pending delivery
        self._unsaved: list[dict[str, Any]] = []  # records the disk refused (ENOSPC)
        self._queued = 0  # records put() that are neither on disk nor in _unsaved yet
        self._count_lock = threading.Lock()  # guards _queued, _unsaved and their moves
        self._wake = asyncio.Event()
        self.idle = asyncio.Event()
        """Set while nothing is pending (the demo and tests wait on it)."""
        self._seq = 0
        self._disk_error_logged = False
        self._first_failure_logged = False
        self._current: Path | None = None  # the record out for delivery
        self._faults: tuple[Path | None, int] = (None, 0)  # faults in a row, by record
        self._to_reject: tuple[Path, str] | None = None  # set aside after faults
        self._delay = 0.0  # before the next round
        self.delivered = 0
        self.rejected = 0
        self.dropped = 0
        self.corrupt = 0
        self.drafts_dropped = 0

    # ------------------------------------------------------------------ set-up

    def open(self) -> None:
        """Create the directories; move aside half-written files from a crash.

        Raises:
            OSError: the directory cannot be created (the caller reports it).
        """
        for sub in ("", "rejected", "corrupt", "drafts"):
            d = self.dir / sub
            d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            try:  # mkdir's mode is cut by the umask, and an old directory may be open
                os.chmod(d, DIR_MODE)
            except OSError as e:
                logger.warning("outbox: cannot make %s private: %s", d, e.strerror or e)
        with guard.contain("outbox start-up", logger):
            for tmp in [*self.dir.glob(".tmp-*"), *(self.dir / "drafts").glob(".tmp-*")]:
                logger.warning("outbox: removing %s, a record half-written when the power "
                               "went (it was never acknowledged)", tmp.name)
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        with guard.contain("outbox start-up", logger):
            self._promote_drafts()
        pending = self.pending
        if pending:
            logger.info("outbox: %d transcript record(s) waiting from before", pending)

    @property
    def retry_max_s(self) -> float:
        """The longest wait between delivery attempts."""
        return self._retry.max_s

    @property
    def pending(self) -> int:
        """Records not yet accepted by the sink (on disk or waiting for disk space)."""
        with self._count_lock:  # a record moving from _queued to the disk is seen once
            try:
                on_disk = sum(1 for p in self.dir.iterdir() if p.suffix == ".json")
            except OSError:
                on_disk = 0
            return on_disk + len(self._unsaved) + self._queued

    # ------------------------------------------------------------------ writing

    def put(self, record: dict[str, Any]) -> None:
        """Queue ``record`` for a durable write (on the worker thread), then delivery."""
        loop = asyncio.get_running_loop()
        self.idle.clear()
        with self._count_lock:
            self._queued += 1
        fut = asyncio.wrap_future(self._io.submit(self._write, guard.storable(record), True),
                                  loop=loop)
        self._writes.add(fut)
        fut.add_done_callback(self._written)

    def _written(self, fut: asyncio.Future[None]) -> None:
        self._writes.discard(fut)
        self._wake.set()

    def _name(self) -> str:
        # time first, so that a directory listing sorted by name is oldest first
        self._seq += 1
        return f"{time.time_ns():020d}-{self._seq:06d}"

    def _write(self, record: dict[str, Any], queued: bool = False) -> None:
        """Write one record durably (worker thread); on failure keep it in memory.

        ``queued``: the record came through :meth:`put` and is counted in ``_queued``
        until it is either on disk or in ``_unsaved``; the move from one count to the
        other is made under ``_count_lock``, so :attr:`pending` never counts it twice.
        """
        landed = False

        def keep(_exc: BaseException) -> None:
            if not landed:
                self._keep_unsaved(record, queued)

        with guard.contain("outbox write", logger, on_fault=keep):
            landed = self._land(record, queued)
        if landed:
            with guard.contain("outbox write", logger):
                self._after_landing(record)

    def _keep_unsaved(self, record: dict[str, Any], queued: bool) -> None:
        with self._count_lock:
            self._unsaved.append(record)
            self._queued -= queued

    def _land(self, record: dict[str, Any], queued: bool) -> bool:
        """Put the record in place under its name; False: kept in memory instead."""
        data = _encode(record)
        name = self._name()
        tmp = self.dir / f".tmp-{name}"
        try:
            _write_file(tmp, data)
            with self._count_lock:
                os.replace(tmp, self.dir / f"{name}.json")
                self._queued -= queued
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._keep_unsaved(record, queued)
            if not self._disk_error_logged:
                self._disk_error_logged = True
                what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                logger.error("outbox: cannot save transcript %s to %s: %s; keeping it in "
                             "memory and retrying", record.get("id"), self.dir, what)
            return False
        self._disk_error_logged = False
        return True

    def _after_landing(self, record: dict[str, Any]) -> None:
        """The record is in place: make the rename durable, drop its draft, keep the bound.

        A failure here must not keep the record in memory too: it is on disk, and would
        be written and delivered twice.
        """
        try:
            _fsync_dir(self.dir)
        except OSError as e:  # the file is whole; only the rename might not survive a crash
            if guard.should_log("outbox:fsync-dir") is not None:
                logger.warning("outbox: cannot sync %s after saving transcript %s: %s",
                               self.dir, record.get("id"), e.strerror or e)
        self._drop_draft(record.get("id"))  # the record is safe: its draft can go
        self._enforce_bounds()

    def put_draft(self, record: dict[str, Any]) -> None:
        """Keep an assistant record durably until its final version is :meth:`put`."""
        loop = asyncio.get_running_loop()
        fut = asyncio.wrap_future(self._io.submit(self._write_draft, guard.storable(record)),
                                  loop=loop)
        self._draft_writes.add(fut)
        fut.add_done_callback(self._draft_writes.discard)

    def _write_draft(self, record: dict[str, Any]) -> None:
        with guard.contain("outbox draft", logger):
            drafts = self.dir / "drafts"
            tmp = drafts / f".tmp-{self._name()}"
            try:
                _write_file(tmp, _encode(record))
                # named by the record's id, so the final record finds it
                os.replace(tmp, drafts / f"{_safe_name(record['id'])}.json")
                _fsync_dir(drafts)
            except OSError as e:  # the final record will still be written (or kept)
                with contextlib.suppress(OSError):
                    tmp.unlink()
                logger.debug("outbox: draft %s not saved: %s", record.get("id"), e)
                return
            self._enforce_drafts()

    def _drop_draft(self, record_id: object) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "drafts" / f"{_safe_name(record_id)}.json").unlink()

    def _enforce_drafts(self) -> None:
        """Keep the newest :attr:`max_drafts` drafts.

        A reply in progress needs one or two; a server that starts replies it never
        finishes would leave thousands, each promoted to a record at the next start.
        """
        entries = self._entries(self.dir / "drafts")
        if len(entries) <= self.max_drafts:
            return
        entries.sort(key=_mtime)
        drop = entries[:len(entries) - self.max_drafts]
        for e in drop:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
        self.drafts_dropped += len(drop)
        if guard.should_log("outbox:drafts") is not None:
            logger.warning("outbox: more than %d drafts (replies that never finished); "
                           "dropped the oldest (%d so far)", self.max_drafts,
                           self.drafts_dropped)

    def _promote_drafts(self) -> None:
        """Drafts left by a crash become records: the words, with heard_ms unknown."""
        self._enforce_drafts()
        for entry in sorted(self._entries(self.dir / "drafts"), key=_mtime):
            path = Path(entry.path)
            try:
                record = json.loads(guard.read_small_file(
                    path, MAX_RECORD_BYTES, follow_symlinks=False)[0])
                why = record_problem(record)
                if why is not None:
                    raise ValueError(f"not a transcript record: {why}")
                record["metadata"]["playback"] = "unknown: the device stopped while playing"
            except FileNotFoundError:
                continue
            except (OSError, ValueError, RecursionError) as e:
                self._set_aside(path, self.dir / "corrupt" / f"draft-{path.name}", "draft",
                                _why(e))
                continue
            logger.warning("outbox: recovering transcript %s, cut off mid-reply by a "
                           "restart", guard.printable(record["id"], 80))
            record = guard.storable(record)
            self._write(record)
            if not any(r is record for r in self._unsaved):  # whatever its file's name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _entries(self, directory: Path) -> list[os.DirEntry[str]]:
        """The ``*.json`` regular files in ``directory``.

        Anything else of that name (a directory, a FIFO, a symlink) moves to ``corrupt/``
        at once: it would make the delivery loop raise, block or follow it elsewhere.
        """
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if e.name.endswith(".json")]
        except OSError:
            return []
        out: list[os.DirEntry[str]] = []
        for e in entries:
            try:
                regular = e.is_file(follow_symlinks=False)
            except OSError:
                regular = False
            if regular:
                out.append(e)
            else:
                self._set_aside(Path(e.path), self.dir / "corrupt" / e.name, "file",
                                "not a regular file")
        return out

    def _set_aside(self, path: Path, dest: Path, what: str, why: str) -> bool:
        """Move a bad file to ``corrupt/`` (counted, logged with the reason)."""
        moved = self._move(path, dest)
        if moved:
            self.corrupt += 1
            logger.error("outbox: %s %s is damaged (%s); moved to %s", what, path.name,
                         guard.printable(why, 200), dest)
            self._enforce_dir(dest.parent)
        return moved

    def _enforce_bounds(self) -> None:
        drop = self._enforce_dir(self.dir)
        if drop:
            self.dropped += drop
            logger.warning("outbox: over its bound (%d records / %d bytes): dropped the %d "
                           "oldest transcript record(s)", self.max_records, self.max_bytes,
                           drop)

    def _enforce_dir(self, directory: Path) -> int:
        """Drop the oldest files of ``directory`` over the bounds; return how many."""
        try:
            with os.scandir(directory) as it:
                found = [e for e in it if e.name.endswith(".json")
                         and e.is_file(follow_symlinks=False)]
        except OSError:
            return 0
        found.sort(key=lambda e: e.name)
        sizes = []
        for e in found:
            try:
                sizes.append(e.stat(follow_symlinks=False).st_size)
            except OSError:
                sizes.append(0)
        total = sum(sizes)
        drop = 0
        while len(found) - drop > self.max_records or (total > self.max_bytes
                                                        and drop < len(found) - 1):
            total -= sizes[drop]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(found[drop].path)
            drop += 1
        return drop

    def _retry_unsaved(self) -> None:
        with self._count_lock:  # counted as queued until each lands again
            records, self._unsaved = self._unsaved, []
            self._queued += len(records)
        for r in records:
            self._write(r, True)

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
        entries = self._entries(self.dir)
        return Path(min(entries, key=lambda e: e.name).path) if entries else None

    def _load(self, path: Path) -> dict[str, Any] | None:
        """The record in ``path``, or None.

        None when it is damaged (moved aside) or already gone (dropped by the bound while
        it waited, and counted in ``dropped`` there).
        """
        try:
            record = json.loads(guard.read_small_file(
                path, MAX_RECORD_BYTES, follow_symlinks=False)[0])
            why = record_problem(record)
            if why is not None:
                raise ValueError(f"not a transcript record: {why}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as e:
            self._set_aside(path, self.dir / "corrupt" / path.name, "record", _why(e))
            return None
        return guard.storable(record)  # type: ignore[no-any-return]

    def _move(self, path: Path, dest: Path) -> bool:
        """Move a file aside; False when it is gone (the bound dropped it meanwhile)."""
        try:
            if os.path.lexists(dest):  # a name seen before: keep both
                dest = dest.with_name(f"{time.time_ns()}-{dest.name}")
            os.replace(path, dest)
        except FileNotFoundError:
            return False
        except OSError as e:  # cannot move it: remove it, or the loop would spin on it
            logger.error("outbox: cannot move %s aside (%s); removing it", path.name,
                         e.strerror or e)
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
            return False
        _fsync_dir(dest.parent)
        return True

    def _remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _fsync_dir(self.dir)

    async def run(self) -> None:
        """Deliver forever, oldest first, with jittered exponential backoff on failure.

        Each round is contained: an unexpected exception (a sink's bug, a file system
        surprise) is counted in ``guard.faults`` and waited out like a failed delivery;
        the record that caused :data:`FAULTS_BEFORE_REJECT` of them in a row moves to
        ``rejected/``, so one record can neither end the daemon nor block the rest.
        """
        while True:
            self._delay = 0.0
            with guard.contain("outbox delivery", logger, on_fault=self._after_fault):
                self._delay = await self._round()
            if self._to_reject is not None:
                (path, reason), self._to_reject = self._to_reject, None
                with guard.contain("outbox delivery (recovery)", logger):
                    await self._reject(path, path.stem, reason)
            if self._delay:
                await asyncio.sleep(self._delay)

    async def _round(self) -> float:
        """One delivery attempt; returns how long to wait before the next."""
        loop = asyncio.get_running_loop()
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
            return 0.0
        record = await loop.run_in_executor(self._io, self._load, path)
        if record is None:
            return 0.0
        self._current = path
        result = await self.sink.deliver(record)
        self._current = None
        if result.outcome is Outcome.DELIVERED:
            await loop.run_in_executor(self._io, self._remove, path)
            self.delivered += 1
            if self._retry.attempts:
                logger.info("outbox: %s reachable again; delivering", self.sink.name)
            self._retry.reset()
            self._first_failure_logged = False
            self._faults = (None, 0)
            return 0.0
        if result.outcome is Outcome.REJECTED:
            self.rejected += 1
            await self._reject(path, record["id"], result.reason)
            return 0.0
        delay = self._retry.next()
        log = logger.debug if self._first_failure_logged else logger.warning
        self._first_failure_logged = True
        log("outbox: %s: %s; %d record(s) waiting, retrying in %.0f s", self.sink.name,
            guard.printable(result.reason, 300), self.pending, delay)
        return delay

    async def _reject(self, path: Path, record_id: str, reason: str) -> None:
        dest = self.dir / "rejected" / path.name
        loop = asyncio.get_running_loop()
        kept = await loop.run_in_executor(self._io, self._move, path, dest)
        if kept:
            await loop.run_in_executor(self._io, self._enforce_dir, dest.parent)
        logger.error("outbox: %s rejected transcript %s (%s); %s",
                     self.sink.name if self.sink else "the sink",
                     guard.printable(record_id, 80), guard.printable(reason, 300),
                     f"kept in {dest}" if kept else "the outbox's bound had already dropped it")

    def _after_fault(self, exc: BaseException) -> None:
        """A round raised: back off; the record that keeps doing it is set aside."""
        path, self._current = self._current, None
        if path is not None:
            same, count = self._faults
            count = count + 1 if same == path else 1
            self._faults = (path, count)
            if count >= FAULTS_BEFORE_REJECT:
                self._faults = (None, 0)
                self.rejected += 1
                self._to_reject = (path, f"delivering it failed {count} times: "
                                         f"{type(exc).__name__}: {guard.printable(exc, 200)}")
                return
        self._delay = self._retry.next()

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


def _safe_name(record_id: object) -> str:
    """A draft's file name from its record id: never a path, whatever the id holds."""
    text = str(record_id)
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:100] or "_"
