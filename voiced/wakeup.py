"""A wake-up for one waiting coroutine: a bare future and at most one timer.

``asyncio.wait_for`` on an ``asyncio.Event`` starts a task for every wait. The mic waits
for each 20 ms frame and the orb for each of up to 30 LED frames a second, and those tasks
were several extra event-loop turns each (bench/audio_bench.py).
"""

from __future__ import annotations

import asyncio


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Wakeup:
    """One coroutine at a time waits; code on the loop's thread wakes it with :meth:`set`.

    Unlike an Event it holds no flag: a ``set()`` while nobody waits is forgotten, so the
    waiter checks its own condition before and after waiting.
    """

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Wake the waiter, if there is one."""
        if self._future is not None:
            _resolve(self._future)

    async def wait(self, seconds: float | None = None) -> None:
        """Until :meth:`set`, or until ``seconds`` have passed (None: no limit).

        A timer, not ``asyncio.timeout``: the orb's waits end by time 30 times a second,
        and a timeout would raise and catch an exception each time.
        """
        loop = asyncio.get_running_loop()
        future = self._future = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _resolve, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            self._future = None
