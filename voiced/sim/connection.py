"""What every connection of `voiced sim` shares, whichever dialect it speaks.

One writer task sends what the protocol logic queued, in the order it was queued (the
logic never waits on the socket); it also injects the junk-frame faults. Background work
(recognition, speech, timers) runs as tracked tasks that end with the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from voiced.sim.options import SimOptions
from voiced.sim.responses import new_id

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class Connection:
    """A simulator connection's writer, tasks and transport faults."""

    MALFORMED = '{"type": "response.output_audio.delta", "delta": 12'
    """The malformed frame sent for the ``malformed_every`` fault."""

    def __init__(self, ws: ServerConnection, opts: SimOptions) -> None:
        self.ws = ws
        self.opts = opts
        self.stalled = False
        self._out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _error(self, code: str, message: str, *, param: str | None = None,
               event_id: str | None = None, etype: str = "invalid_request_error") -> None:
        """Send the dialect's ``error`` event."""
        raise NotImplementedError

    def _client_event(self, frame: str | bytes) -> tuple[dict[str, Any], str | None] | None:
        """A client frame as a JSON object with a string type, and its event_id.

        None, after an ``error`` event, for anything else.
        """
        if isinstance(frame, bytes):
            self._error("invalid_event", "Expected a text WebSocket message, got binary.")
            return None
        try:
            ev = json.loads(frame)
        except ValueError:
            self._error("invalid_json", "The server could not parse the JSON.")
            return None
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
            self._error("invalid_event", "Missing required parameter: 'type'.", param="type")
            return None
        return ev, ev.get("event_id") if isinstance(ev.get("event_id"), str) else None

    def _written(self, payload: Any) -> str:
        """Keep what is about to be sent (for tests to inspect); return its text."""
        raise NotImplementedError

    async def _writer(self) -> None:
        written = 0
        try:
            while True:
                kind, payload = await self._out.get()
                if kind == "abort":
                    self.ws.transport.abort()
                    return
                if kind == "close":
                    await self.ws.close(*payload)
                    return
                if self.stalled:
                    continue
                await self.ws.send(self._written(payload))
                written += 1
                if self.opts.malformed_every and written % self.opts.malformed_every == 0:
                    await self.ws.send(self.MALFORMED)
                if self.opts.unknown_every and written % self.opts.unknown_every == 0:
                    await self.ws.send(json.dumps({
                        "type": "sim.unknown_event", "event_id": new_id("event"),
                        "note": "clients must ignore unknown types"}))
        except ConnectionClosed:
            pass

    def stall(self) -> None:
        """Go silent: stop reading (so pings get no pong) and sending."""
        self.stalled = True
        self.ws.transport.pause_reading()

    def abort(self) -> None:
        """Drop the connection once what is queued has gone out (no close frame)."""
        self._out.put_nowait(("abort", None))

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("simulator task failed", exc_info=task.exception())
