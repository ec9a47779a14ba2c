"""A stand-in for the supervisor's GPT-Live wiring, for tests of the core against the sim.

It does what the wiring will do, and no more: one WebSocket to ``/v1/live/sessions`` at
a time (``Reconnect`` opens one, ``Disconnect`` closes it), every frame parsed by
:mod:`voiced.live.wire` into :meth:`LiveConversation.on_server_event`, ``Send`` encoded
onto the socket, tools run through a :class:`~voiced.tools.Toolbox`, records collected.
Records go through the contract's record shape (:func:`voiced.transcripts.make_record`)
into a real sink when one is given. The microphone and the speaker are one clock: each
step hands the core one 20 ms mic frame and plays 20 ms of whatever reply audio is
queued, so playback and the session's timeline advance together, as on a device, at
whatever pace the machine allows. The core's ``now`` is that clock (audio time), so
quiet times pass in audio, not wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voiced import wire
from voiced.core.effects import (
    CallTool,
    CancelTool,
    Draft,
    MicOpened,
    Play,
    Reconnect,
    Record,
    Send,
    ShowState,
    StopPlayback,
)
from voiced.live import wire as lw
from voiced.live.core import Disconnect, LiveConversation
from voiced.outbox import Outcome, Sink, record_problem
from voiced.tools import Toolbox
from voiced.transcripts import make_record

logger = logging.getLogger(__name__)
FRAME = 960  # 20 ms of PCM16 at 24 kHz


class Rig:
    """The core, a socket to the simulator, a clocked mic and speaker, a toolbox."""

    def __init__(self, core: LiveConversation, url: str, toolbox: Toolbox | None = None,
                 pace: float = 0.004, sink: Sink | None = None,
                 device_id: str = "kitchen") -> None:
        self.core = core
        self.sink = sink
        self.device_id = device_id
        self.url = url
        self.toolbox = toolbox or Toolbox([])
        self.pace = pace  # wall seconds per 20 ms step
        self.now = 0.0  # audio time, the core's clock
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.mic: deque[bytes] = deque()
        self.queue: deque[tuple[str, bytearray]] = deque()  # (burst id, samples left)
        self.played: dict[str, int] = {}  # samples played, per burst id
        self.records: list[dict[str, Any]] = []
        self.drafts: list[dict[str, Any]] = []
        self.states: list[tuple[str, str]] = []
        self.sent: list[dict[str, Any]] = []
        self.events: list[Any] = []
        self.tool_calls: list[tuple[str, str, str]] = []
        self.connections = 0
        self._tools: dict[str, asyncio.Task[None]] = {}
        self._work: asyncio.Queue[Any] = asyncio.Queue()

    # ------------------------------------------------------------------ driving

    def say(self, pcm: bytes) -> None:
        """Queue speech for the microphone (silence is captured when nothing is queued)."""
        for i in range(0, len(pcm), FRAME):
            self.mic.append(pcm[i:i + FRAME].ljust(FRAME, b"\0"))

    async def step(self) -> None:
        """20 ms: one mic frame to the core, 20 ms of playback, the core's effects."""
        await self._drain_work()
        self.now += 0.02
        pcm = self.mic.popleft() if self.mic else bytes(FRAME)
        self.core.on_mic_frame(pcm, self.now)
        self._play(FRAME // 2)
        if round(self.now * 50) % 50 == 0:
            self.core.on_tick(self.now, 1_800_000_000.0 + self.now)
        await self.apply()
        await asyncio.sleep(self.pace)

    async def run_until(self, done: Any, seconds: float = 60.0) -> None:
        """Step until ``done()`` is true, at most ``seconds`` of audio time."""
        end = self.now + seconds
        while not done():
            if self.now >= end:
                raise AssertionError(f"not done after {seconds} s of audio; "
                                     f"state {self.core.state}, phase {self.core.phase}")
            await self.step()

    async def press(self) -> None:
        self.core.on_press(self.now)
        await self.apply()

    async def _drain_work(self) -> None:
        """Events and tool results that arrived since the last step, in order."""
        while not self._work.empty():
            item = self._work.get_nowait()
            kind = item[0]
            if kind == "event":
                self.events.append(item[1])
                self.core.on_server_event(item[1], self.now)
            elif kind == "down":
                self.core.on_connection_down(item[1], self.now)
            elif kind == "result":
                self.core.on_tool_result(item[1], item[2], self.now)
            await self.apply()

    # ------------------------------------------------------------------ effects

    async def apply(self) -> None:
        for effect in self.core.take_effects():
            match effect:
                case Send():
                    event: Any = effect.event
                    if event["type"] != "session.input_audio.append":
                        self.sent.append(dict(event))
                    if self.ws is not None:
                        with contextlib.suppress(ConnectionClosed):
                            await self.ws.send(lw.encode(event))
                case Play():
                    if not self.queue or self.queue[-1][0] != effect.item_id:
                        self.queue.append((effect.item_id, bytearray()))
                    self.queue[-1][1].extend(effect.pcm)
                case StopPlayback():
                    left = {bid: self.played.get(bid, 0) for bid, _ in self.queue}
                    self.queue.clear()
                    self.core.on_playback_stopped(self.now, left)
                case ShowState():
                    self.states.append((str(effect.state), effect.detail))
                case Record():
                    self.records.append(_record(effect.transcript))
                    if self.sink is not None:
                        rec = make_record(effect.transcript, device_id=self.device_id,
                                          created_at=1_800_000_000.0 + self.now)
                        assert record_problem(rec) is None, record_problem(rec)
                        result = await self.sink.deliver(rec)
                        assert result.outcome is Outcome.DELIVERED, result
                case Draft():
                    self.drafts.append(_record(effect.transcript))
                case Reconnect():
                    await self._close("reconnect")
                    await self._open()
                case Disconnect():
                    await self._close(effect.reason)
                case CallTool():
                    self.tool_calls.append((effect.call_id, effect.name, effect.arguments))
                    self._tools[effect.call_id] = asyncio.get_running_loop().create_task(
                        self._run_tool(effect.call_id, effect.name, effect.arguments))
                case CancelTool():
                    task = self._tools.pop(effect.call_id, None)
                    if task is not None:
                        task.cancel()
                case MicOpened():
                    pass
                case _:
                    raise AssertionError(f"unexpected effect {effect!r}")

    def _play(self, samples: int) -> None:
        if not self.queue:
            return
        while samples and self.queue:
            bid, buf = self.queue[0]
            n = min(samples, len(buf) // 2)
            del buf[:n * 2]
            self.played[bid] = self.played.get(bid, 0) + n
            samples -= n
            if not buf:
                self.queue.popleft()
        if not self.queue:
            self.core.on_playback_drained(self.now)

    async def _run_tool(self, call_id: str, name: str, arguments: str) -> None:
        output = await self.toolbox.run(name, arguments)
        self._work.put_nowait(("result", call_id, output))

    # ------------------------------------------------------------------ socket

    async def _open(self) -> None:
        try:
            self.ws = await connect(self.url, additional_headers={
                "Authorization": "Bearer sk-sim"}, max_size=16 << 20)
        except OSError as e:
            self._work.put_nowait(("down", f"connect failed: {e}"))
            return
        self.connections += 1
        self.core.on_connection_up(self.now)
        self.reader = asyncio.get_running_loop().create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                try:
                    self._work.put_nowait(("event", lw.parse_server_event(frame)))
                except wire.MalformedEvent as e:
                    logger.warning("malformed: %s", e)
        except ConnectionClosed:
            pass
        if ws is self.ws:
            self.ws = None
            self._work.put_nowait(("down", "closed"))

    async def _close(self, reason: str) -> None:
        ws, self.ws = self.ws, None
        if ws is None:
            return
        await ws.close()
        if self.reader is not None:
            await self.reader
        self.core.on_connection_down(reason, self.now)

    async def aclose(self) -> None:
        for task in self._tools.values():
            task.cancel()
        await self._close("test over")


def _record(t: Any) -> dict[str, Any]:
    return {"role": t.role, "text": t.text, "item_id": t.item_id,
            "conversation_id": t.conversation_id, "metadata": dict(t.metadata)}
