"""A local server that speaks the GA Realtime dialect, for demos, installers and tests.

It does what the real API does on the parts voiced and the official SDK use:
session.created/updated (unknown fields refused), the input buffer with server VAD
(threshold, prefix padding, silence duration, idle timeout), input transcription
(deltas, completed or failed), audio or text responses streamed at about real time in
the GA event order, out-of-band responses, function calls with arguments made to fit
the declared schema, cancellation, truncation, its error events, rate limits, expiry,
and auth refusal. The protocol itself is in :mod:`voiced.sim.conversation`; tests drive
its faults and its clock through :class:`SimServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voiced.sim.clock import Clock, ManualClock, RealClock
from voiced.sim.conversation import SimSession
from voiced.sim.live import LiveSession
from voiced.sim.options import SimOptions
from voiced.sim.responses import new_id

logger = logging.getLogger(__name__)

__all__ = ["Clock", "LiveSession", "ManualClock", "RealClock", "SimOptions", "SimServer",
           "SimSession", "serve_forever"]

LIVE_PATH = "/v1/live/sessions"
"""GPT-Live's endpoint; every other path is the Realtime one."""


class SimServer:
    """The simulator, importable for tests: ``async with SimServer() as sim: sim.url``."""

    def __init__(self, options: SimOptions | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, clock: Clock | None = None) -> None:
        self.options = options or SimOptions()
        self.clock: Clock = clock or RealClock()
        """Session lengths, expiries and the stall fault run on it."""
        self.host = host
        self.port = port
        self.sessions: list[SimSession] = []
        self.live_sessions: list[LiveSession] = []
        self._server: Server | None = None
        self.refuse_connections = False
        self.attempts: list[float] = []  # time.monotonic() of every connection attempt
        # faults still to inject, by kind: each take_*() uses one up
        self._left = {"drop": self.options.drop_mid_response,
                      "transcription": self.options.transcription_failures}

    def _connections(self) -> list[SimSession | LiveSession]:
        return [*self.sessions, *self.live_sessions]

    def _take(self, fault: str) -> bool:
        if self._left[fault] > 0:
            self._left[fault] -= 1
            return True
        return False

    def take_drop(self) -> bool:
        """Whether the current reply should be cut by a dropped connection."""
        return self._take("drop")

    def drop_next_responses(self, n: int = 1) -> None:
        """Faults: abort the connection halfway through the next ``n`` replies."""
        self._left["drop"] = n

    def take_transcription_failure(self) -> bool:
        """Whether the current input transcription should fail."""
        return self._take("transcription")

    def fail_next_transcriptions(self, n: int = 1) -> None:
        """Faults: the next ``n`` input transcriptions fail."""
        self._left["transcription"] = n

    def expire_sessions(self) -> None:
        """Faults: every open session ends now.

        Realtime: ``session_expired``, then close 1001; GPT-Live: ``session.closed`` with
        reason ``expired``, then close 1000.
        """
        for s in self._connections():
            if s.ended_at is None:
                s.expire()

    def stall(self) -> None:
        """Faults: every open connection goes silent (no events, no pongs)."""
        for s in self._connections():
            s.stall()

    @property
    def url(self) -> str:
        """The ws:// URL clients connect to."""
        return f"ws://{self.host}:{self.port}/v1/realtime"

    @property
    def live_url(self) -> str:
        """The ws:// URL of the GPT-Live endpoint."""
        return f"ws://{self.host}:{self.port}{LIVE_PATH}"

    async def start(self) -> None:
        """Listen (port 0 picks a free one)."""
        self._server = await serve(self._handle, self.host, self.port,
                                   process_request=self._check_request, max_size=16 << 20,
                                   compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("simulator listening on %s", self.url)

    def _check_request(self, conn: ServerConnection, req: Request) -> Response | None:
        self.attempts.append(time.monotonic())
        if self.refuse_connections:
            return conn.respond(503, "simulator refusing connections\n")
        if urlsplit(req.path).path.rstrip("/") == LIVE_PATH:
            # GPT-Live: how the service refuses a key is not known (open question Q5);
            # the simulator refuses the upgrade, which every client reports as such
            bearer = req.headers.get("Authorization") or ""
            key = bearer.removeprefix("Bearer ").strip() if bearer.startswith("Bearer ") else ""
            if not key or self.options.require_key not in (None, key):
                return conn.respond(401, "Incorrect API key provided.\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        req = ws.request
        assert req is not None
        if urlsplit(req.path).path.rstrip("/") == LIVE_PATH:
            live = LiveSession(ws, self)
            self.live_sessions.append(live)
            await live.run()
            return
        q = parse_qs(urlsplit(req.path).query)
        model = (q.get("model") or ["gpt-realtime-2.1"])[0]
        bearer = (req.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        fatal: tuple[int, str, str] | None = None
        if self.options.require_key is not None and bearer != self.options.require_key:
            fatal = (3000, "invalid_api_key", "Incorrect API key provided.")
        elif req.headers.get("OpenAI-Beta"):
            fatal = (4000, "beta_api_shape_disabled", "The Realtime Beta API is no longer "
                     "supported. Please use /v1/realtime for the GA API.")
        elif "preview" in model:
            fatal = (4000, "invalid_model", f"Model '{model}' is not supported.")
        if fatal is not None:
            code, err, msg = fatal
            await ws.send(json.dumps({"type": "error", "event_id": new_id("event"), "error": {
                "type": "invalid_request_error", "code": err, "message": msg,
                "param": None, "event_id": None}}))
            await ws.close(code, f"invalid_request_error.{err}")
            return
        session = SimSession(ws, self, model)
        self.sessions.append(session)
        await session.run()

    def drop_connections(self) -> None:
        """Abort every connection without a close frame (a network drop: 1006)."""
        for s in self._connections():
            s.ws.transport.abort()

    async def inject(self, frame: str | bytes) -> None:
        """Send a raw frame (malformed, unknown, binary) to every open connection."""
        for s in self._connections():
            with contextlib.suppress(ConnectionClosed):
                await s.ws.send(frame)

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        for session in self._connections():
            if session.stalled:  # a stalled peer would never answer the close handshake
                session.ws.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def serve_forever(host: str, port: int, options: SimOptions) -> int:
    """Run `voiced sim` until SIGTERM or SIGINT, then close every connection.

    The signals are handled on the event loop. *Changed from* the early start-up handler
    (which raises SystemExit wherever the program is): a SIGTERM that landed inside a
    connection's handler left the server waiting for that connection for good, and the
    process never exited (tests that stop `voiced sim` timed out now and then).
    """
    sim = SimServer(options, host=host, port=port)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"voiced sim: listening on {sim.url} (GA Realtime dialect) and {sim.live_url} "
          "(GPT-Live); no API key needed", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await sim.aclose()
    return 0
