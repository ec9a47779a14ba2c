"""The simulator's clock: real time, or time that moves only when a test says so.

Session lengths, expiries and the stall fault are timed on it, so a test can end an
hour-long session at the moment it chooses instead of waiting, however busy the machine
is. Reply audio is still paced on the event loop's clock: that is streaming, not a
deadline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Epoch seconds, and a way to wait for a moment on that scale."""

    def time(self) -> float:
        """Now, in epoch seconds."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Return once :meth:`time` has reached ``when``."""
        ...


class RealClock:
    """The wall clock."""

    def time(self) -> float:
        """Now, from :func:`time.time`."""
        return time.time()

    async def sleep_until(self, when: float) -> None:
        """Sleep on the event loop until the wall clock reaches ``when``."""
        left = when - time.time()
        while left > 0:  # asyncio's timer may wake a little early
            await asyncio.sleep(left)
            left = when - time.time()


class ManualClock:
    """Epoch seconds that move only through :meth:`advance` / :meth:`advance_to`.

    Share one with the daemon (``Supervisor(wall_clock=clock.time)``) and the session
    deadlines of both sides move together.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        """The clock's current reading."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (≥ 0) and wake whoever is due."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Move the clock forward to ``when`` (never back) and wake whoever is due."""
        self._now = max(self._now, when)
        waiting = []
        for due, fut in self._sleepers:
            if fut.done():
                continue
            if due <= self._now:
                fut.set_result(None)
            else:
                waiting.append((due, fut))
        self._sleepers = waiting

    async def sleep_until(self, when: float) -> None:
        """Wait until the clock has been moved to ``when`` or past it."""
        if when <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((when, fut))
        await fut
