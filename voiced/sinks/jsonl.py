"""The ``jsonl`` sink: one JSON object per line, appended and fsynced."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

from voiced.outbox import Outcome, Result

logger = logging.getLogger(__name__)

_REMEMBER = 10_000  # ids of the last records written, to make a redelivery a no-op


class JsonlSink:
    """Appends records to ``path``; a record already in the file is not written again."""

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: set[str] = set()
        self._order: deque[str] = deque()
        self._loaded = False

    def _remember(self, rid: str) -> None:
        self._seen.add(rid)
        self._order.append(rid)
        if len(self._order) > _REMEMBER:
            self._seen.discard(self._order.popleft())

    def _load_tail(self) -> None:
        # NOTE: a crash between the append and the outbox's unlink redelivers the last
        # record; the tail of the file tells us it is already there
        self._loaded = True
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4_000_000))
                tail = f.read().splitlines()
        except OSError:  # none yet, or not a file we can seek: nothing to skip
            return
        for line in tail[-_REMEMBER:]:
            try:
                rid = json.loads(line).get("id")
            except (ValueError, AttributeError, RecursionError):  # whatever the file holds
                continue
            if isinstance(rid, str):
                self._remember(rid)

    def _append(self, record: dict[str, Any]) -> Result:
        if not self._loaded:
            self._load_tail()
        if record["id"] in self._seen:
            return Result(Outcome.DELIVERED, "already in the file")
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o640)
        except OSError as e:
            return Result(Outcome.RETRY, f"cannot append to {self.path}: {e.strerror or e}")
        try:
            start = os.fstat(fd).st_size
            try:
                # a full disk takes part of a line (a short write) before it refuses the
                # rest: only the whole line, fsynced, is delivered
                view = memoryview(line.encode("utf-8"))
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as e:
                try:
                    os.ftruncate(fd, start)  # no torn line for the next one to follow
                except OSError as again:
                    logger.error("jsonl: %s may end in a torn line (%s)", self.path,
                                 again.strerror or again)
                return Result(Outcome.RETRY, f"cannot append to {self.path}: "
                                             f"{e.strerror or e}")
        finally:
            os.close(fd)
        self._remember(record["id"])
        return Result(Outcome.DELIVERED)

    async def deliver(self, record: dict[str, Any]) -> Result:
        """Append the record (on a worker thread)."""
        return await asyncio.to_thread(self._append, record)

    async def aclose(self) -> None:
        """Nothing to release."""
