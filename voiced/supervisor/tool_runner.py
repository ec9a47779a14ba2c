"""Runs the tools the model calls, and is the ``Device`` the built-in tools act on.

Each call runs as its own task, so a slow HTTP tool never holds up audio or the socket;
its output goes back to the core with ``on_tool_result``. ``Toolbox.run`` never raises;
if it did, the call is still answered, or the conversation would wait for it for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from voiced import __version__, guard
from voiced.audio.volume import Volume
from voiced.core.effects import CallTool
from voiced.link import Spawn, create_task
from voiced.outbox import Outbox
from voiced.supervisor.ports import Core
from voiced.tools import Toolbox
from voiced.tools.builtin import network_status, system_uptime_s

logger = logging.getLogger("voiced.supervisor")  # the package logs as one


class ToolRunner:
    """The tool calls in flight, and the device's side of the built-in tools.

    The supervisor sets :attr:`toolbox` (the built-in tools act on this runner) and then
    :attr:`session` (the core is built with the toolbox's declarations).

    Args:
        feed: gives the core one input and applies its effects (the supervisor's).
        apply: applies the effects the core has produced (the supervisor's).
        now: the loop's monotonic clock.
        volume: the speaker volume the volume tool sets.
        server_url: the Realtime URL in force (``device_status`` checks the network).
        outbox: the transcript outbox, if any (``device_status`` reports its backlog).
    """

    session: Core
    toolbox: Toolbox

    def __init__(self, feed: Callable[..., None],
                 apply: Callable[[], None], now: Callable[[], float], volume: Volume,
                 server_url: Callable[[], str], outbox: Outbox | None) -> None:
        self._feed = feed
        self._apply = apply
        self._now = now
        self.volume = volume
        self._server_url = server_url
        self.outbox = outbox
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.spawn: Spawn = create_task
        """Starts each call's task (the daemon's task group)."""
        self._started = time.monotonic()

    def call(self, call: CallTool) -> None:
        """Run a call as a task of its own."""
        task = self.spawn(self._run(call), f"tool-{call.name}")
        self.tasks[call.call_id] = task

    def cancel(self, call_id: str) -> None:
        """Stop a running call (the core answers it as cancelled)."""
        running = self.tasks.pop(call_id, None)
        if running is not None:
            running.cancel()

    def cancel_all(self) -> None:
        """Stop every running call (the daemon stops)."""
        for task in self.tasks.values():
            task.cancel()

    async def _run(self, call: CallTool) -> None:
        # a task of its own: a slow tool never holds up audio or the socket
        try:
            output = await self.toolbox.run(call.name, call.arguments)
        except Exception as e:  # noqa: BLE001 - Toolbox.run never raises; if it did, the
            # call must still be answered, or the conversation waits for it for good
            guard.note_fault("tool", e, logger)
            output = '{"error": "the tool failed unexpectedly"}'
        finally:
            self.tasks.pop(call.call_id, None)
        self._feed("tool result", self.session.on_tool_result, call.call_id, output,
                   self._now())

    # the Device the built-in tools act on

    def mute_mic(self) -> None:
        """Built-in tool: the microphone off."""
        self.session.mute_mic()
        self._apply()

    def end_conversation(self) -> None:
        """Built-in tool: a new conversation once the reply has been heard."""
        self.session.end_conversation()

    def volume_percent(self) -> int:
        """Built-in tool: the speaker volume."""
        return self.volume.percent

    def set_volume(self, percent: int) -> int:
        """Built-in tool: set and persist the speaker volume."""
        return self.volume.set(percent)

    async def device_status(self) -> dict[str, Any]:
        """Built-in tool: network, uptimes, transcript backlog, connection."""
        return {**await network_status(self._server_url()),
                "daemon_uptime_s": round(time.monotonic() - self._started),
                "system_uptime_s": system_uptime_s(),
                "transcripts_waiting": self.outbox.pending if self.outbox else 0,
                "volume_percent": self.volume.percent,
                "version": __version__}
