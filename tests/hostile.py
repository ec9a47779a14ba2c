"""A scriptable loopback Realtime server for hostile-input tests and benchmarks.

Each connection is a :class:`Peer`: the server opens it as the GA API does
(``session.created``, then ``session.updated`` in answer to ``session.update``) unless
told not to, then runs the test's script on it, and records every client event. Frames
are sent as given, so a script can send anything a broken or malicious server or relay
could: deep nesting, surrogate halves, megabyte strings, endless audio, odd close codes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.conftest import TIMEOUT

Script = Callable[["Peer"], Awaitable[None]]


class Peer:
    """One client connection: what it sent, and ways to send it anything."""

    def __init__(self, ws: ServerConnection, index: int) -> None:
        self.ws = ws
        self.index = index  # 0 for the first connection
        self.received: list[dict[str, Any]] = []
        self.headers = ws.request.headers if ws.request is not None else None
        self._got = asyncio.Event()

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        """Send one frame: a dict as JSON, text and bytes as they are."""
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def wait_for(self, type_: str, n: int = 1, within_s: float = TIMEOUT
                       ) -> dict[str, Any]:
        """The n-th client event of ``type_`` (waits for it)."""
        async def loop() -> dict[str, Any]:
            while True:
                seen = [e for e in self.received if e.get("type") == type_]
                if len(seen) >= n:
                    return seen[n - 1]
                self._got.clear()
                await self._got.wait()
        return await asyncio.wait_for(loop(), within_s)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        """Client events of ``type_`` received so far."""
        return [e for e in self.received if e.get("type") == type_]

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                try:
                    event = json.loads(frame)
                except ValueError:
                    event = {"type": "<not json>", "raw": frame}
                self.received.append(event)
                self._got.set()


class HostileServer:
    """A loopback server whose every connection runs ``script`` after the usual opening.

    Args:
        script: what to do on each connection once it is configured (None: nothing).
        expires_at: ``session.created``'s ``session.expires_at`` (any JSON value; a str
            is inserted into the frame as raw JSON text, e.g. ``"Infinity"``).
        configure: answer ``session.update`` with ``session.updated``.
        redirect_to: answer the handshake with ``307 Location: redirect_to`` instead.
    """

    def __init__(self, script: Script | None = None, *, expires_at: object = None,
                 configure: bool = True, redirect_to: str | None = None) -> None:
        self.script = script
        self.expires_at = expires_at if expires_at is not None else time.time() + 3600
        self.configure = configure
        self.redirect_to = redirect_to
        self.peers: list[Peer] = []
        self.attempts = 0
        self._server: Server | None = None
        self.port = 0
        self._new_peer = asyncio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    async def __aenter__(self) -> HostileServer:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None,
                                   compression=None, process_request=self._request)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for p in self.peers:
            p.ws.transport.abort()
        self._server.close()
        await self._server.wait_closed()

    def _request(self, conn: ServerConnection, req: Request) -> Response | None:
        self.attempts += 1
        if self.redirect_to is not None:
            response = conn.respond(307, "moved\n")
            response.headers["Location"] = self.redirect_to
            return response
        return None

    async def wait_for_peer(self, n: int, within_s: float = TIMEOUT) -> Peer:
        """The n-th connection (1-based), once it has been made."""
        async def loop() -> Peer:
            while len(self.peers) < n:
                self._new_peer.clear()
                await self._new_peer.wait()
            return self.peers[n - 1]
        return await asyncio.wait_for(loop(), within_s)

    def session_created(self, index: int) -> str:
        exp = self.expires_at
        raw = exp if isinstance(exp, str) else json.dumps(exp)
        return (f'{{"type": "session.created", "event_id": "ev_c{index}", "session": '
                f'{{"id": "sess_{index}", "object": "realtime.session", '
                f'"expires_at": {raw}}}}}')

    async def _handle(self, ws: ServerConnection) -> None:
        peer = Peer(ws, len(self.peers))
        self.peers.append(peer)
        self._new_peer.set()
        reader = asyncio.create_task(peer._read())
        try:
            await ws.send(self.session_created(peer.index))
            if self.configure:
                await peer.wait_for("session.update")
                await peer.send({"type": "session.updated", "event_id": "ev_u",
                                 "session": {"type": "realtime", "audio": {"output": {
                                     "format": {"type": "audio/pcm", "rate": 24000}}}}})
            if self.script is not None:
                await self.script(peer)
            await reader
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            reader.cancel()


def rss_kb(pid: int) -> int:
    """A process's resident set size now, in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ProcessLookupError(pid)


def audio_delta(pcm: bytes, *, item: str = "item_a", resp: str = "resp_1") -> str:
    """A ``response.output_audio.delta`` frame."""
    return json.dumps({"type": "response.output_audio.delta", "event_id": "ev_d",
                       "response_id": resp, "item_id": item, "output_index": 0,
                       "content_index": 0, "delta": base64.b64encode(pcm).decode()})


def transcript_delta(text_json: str, *, item: str = "item_a", resp: str = "resp_1") -> str:
    """A transcript delta whose ``delta`` is the raw JSON string ``text_json``
    (so a test can put a lone ``\\ud83d`` escape in it)."""
    return ('{"type": "response.output_audio_transcript.delta", "event_id": "ev_t", '
            f'"response_id": "{resp}", "item_id": "{item}", "output_index": 0, '
            f'"content_index": 0, "delta": {text_json}}}')


async def endless_reply(peer: Peer, *, speed: float, chunk_ms: int = 100,
                        resp: str = "resp_endless", item: str = "item_endless",
                        stop: asyncio.Event | None = None) -> int:
    """Stream one reply that never ends, ``speed`` times faster than real time.

    It ignores ``response.cancel``, as a broken or hostile server would. Returns the
    milliseconds of audio sent when ``stop`` is set or the connection closes.
    """
    await peer.send({"type": "response.created", "event_id": "ev_r",
                     "response": {"id": resp, "object": "realtime.response",
                                  "status": "in_progress", "output": []}})
    frame = audio_delta(b"\x10\x00" * (24 * chunk_ms), item=item, resp=resp)
    t0 = time.monotonic()
    sent_ms = 0
    with contextlib.suppress(ConnectionClosed):
        while stop is None or not stop.is_set():
            due_ms = (time.monotonic() - t0) * 1000 * speed
            while sent_ms < due_ms:
                await peer.ws.send(frame)
                sent_ms += chunk_ms
            await asyncio.sleep(0.01)
    return sent_ms
