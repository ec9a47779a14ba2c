"""A minimal relay faithful to the seed's Supabase edge function, upstream in the GA dialect.

What the seed did, and nothing more (the device must work against relays like it):
- the URL ``?agent_id=&voice=&conversation_id=`` (agent_id required, voice default alloy,
  conversation_id optional), any bearer accepted;
- on the upstream connection's open it sends its own ``session.update`` (instructions,
  voice, transcription, server VAD);
- frames are forwarded raw both ways, its own ``session.updated`` included;
- it keeps the last user transcript and the assistant's transcript deltas, and on
  ``response.done`` saves both to ``chat_messages_v2`` with the seed's metadata
  (``{input_method: 'realtime_voice', model}`` and ``{voice, model}``), random ids;
- with no conversation_id it creates a conversation on the first ``response.done`` and
  announces it with ``{"type": "conversation_created", "conversation_id": ...}``; a given
  conversation_id is trusted as it is (a row it cannot save is logged and lost).

``hold_device_update`` makes it hold the device's first session.update until the device
sends audio or ``release_s`` passes (the R3 test uses it to see which session.updated a
device takes as the answer to its update). ``swallow`` names device event types it
does not forward (a relay that drops what it does not know).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

logger = logging.getLogger("seed_relay")

SEED_INSTRUCTIONS = "SEED RELAY INSTRUCTIONS"


class SeedRelay:
    def __init__(self, upstream_url: str, dsn: str, *, model: str = "gpt-realtime-2.1",
                 hold_device_update: bool = False, release_s: float = 10.0,
                 swallow: frozenset[str] = frozenset()) -> None:
        self.upstream_url = upstream_url
        self.dsn = dsn
        self.model = model
        self.hold_device_update = hold_device_update
        self.release_s = release_s
        self.swallow = swallow
        self.queries: list[dict[str, list[str]]] = []
        self.order: list[str] = []  # what happened, in order (R3)
        self.lost: list[str] = []  # rows it could not save
        self.server: Server | None = None
        self.url = ""

    async def __aenter__(self) -> SeedRelay:
        self.server = await serve(self.handler, "127.0.0.1", 0, process_request=self.check,
                                  max_size=16 << 20, compression=None)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/relay"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def check(self, conn: ServerConnection, req: Request) -> Response | None:
        q = parse_qs(urlsplit(req.path).query)
        self.queries.append(q)
        if not q.get("agent_id"):
            return conn.respond(400, "agent_id is required\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        q = parse_qs(urlsplit(ws.request.path).query)
        voice = (q.get("voice") or ["alloy"])[0]
        conversation_id = (q.get("conversation_id") or [None])[0]
        agent_id = q["agent_id"][0]
        up = await connect(f"{self.upstream_url}?model={self.model}", compression=None,
                           max_size=16 << 20)
        await up.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "instructions": SEED_INSTRUCTIONS,
            "audio": {"input": {"transcription": {"model": "whisper-1"},
                                "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                                   "prefix_padding_ms": 300,
                                                   "silence_duration_ms": 500}},
                      "output": {"voice": voice}}}}))
        user_text = ""
        assistant_text = ""
        updates_seen = 0
        appended = asyncio.Event()

        async def downstream() -> None:
            nonlocal user_text, assistant_text, conversation_id, updates_seen
            async for frame in up:
                d = json.loads(frame)
                t = d.get("type")
                if t == "session.updated":
                    updates_seen += 1
                    self.order.append(f"session.updated #{updates_seen} to the device")
                elif t == "conversation.item.input_audio_transcription.completed":
                    user_text = d.get("transcript", "")
                elif t == "response.output_audio_transcript.delta":
                    assistant_text += d.get("delta", "")
                await ws.send(frame)
                if t == "response.done":
                    if conversation_id is None:
                        conversation_id = str(uuid.uuid4())
                        await self._save_conversation(conversation_id, agent_id)
                        await ws.send(json.dumps({"type": "conversation_created",
                                                  "conversation_id": conversation_id}))
                    await self._save(conversation_id, "user", user_text,
                                     {"input_method": "realtime_voice", "model": self.model})
                    await self._save(conversation_id, "assistant", assistant_text,
                                     {"voice": voice, "model": self.model})
                    user_text = assistant_text = ""

        async def held_update(frame: str | bytes) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(appended.wait(), self.release_s)
            self.order.append("device session.update forwarded")
            await up.send(frame)

        async def upstream() -> None:
            holding: asyncio.Task[None] | None = None
            async for frame in ws:
                t = json.loads(frame).get("type")
                if t == "input_audio_buffer.append" and not appended.is_set():
                    appended.set()
                    self.order.append("first audio from the device")
                if t == "session.update" and self.hold_device_update and holding is None:
                    holding = asyncio.create_task(held_update(frame))
                    continue
                if t in self.swallow:
                    continue
                if holding is not None and not holding.done():
                    await holding  # keep the device's order
                await up.send(frame)

        tasks = [asyncio.create_task(downstream()), asyncio.create_task(upstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await up.close()

    async def _save_conversation(self, cid: str, agent_id: str) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(b"insert into conversations (id, agent_id) values (%s, %s)",
                               (cid, agent_id))

    async def _save(self, cid: str, role: str, text: str, metadata: dict[str, Any]) -> None:
        if not text:
            return
        try:
            async with await psycopg.AsyncConnection.connect(self.dsn,
                                                             autocommit=True) as conn:
                await conn.execute(
                    b"insert into chat_messages_v2 (id, conversation_id, role, content, "
                    b"metadata) values (%s, %s, %s, %s, %s::jsonb)",
                    (str(uuid.uuid4()), cid, role, text, json.dumps(metadata)))
        except psycopg.Error as e:  # the seed logged and went on: the row is lost
            logger.warning("seed relay could not save a %s row: %s", role, e)
            self.lost.append(f"{role}: {text} ({type(e).__name__})")

    def first(self, event: str) -> float:
        return self.order.index(event) if event in self.order else float("inf")


__all__ = ["SEED_INSTRUCTIONS", "SeedRelay"]
