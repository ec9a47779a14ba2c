"""`voiced relay`: the WebSocket server devices connect to, and one bridge per device.

Handshake (before any upstream connection): the path, a per-address rate limit, the
device token (401), a per-device rate limit (429), the agent (400/404), the voice (400)
and the conversation (400/404: it must be this device's). Any database trouble is a
503. Then a :class:`~voiced.relay.bridge.Bridge` (voiced/relay/bridge.py) carries the
connection.

Each bridge runs inside ``guard.contain``: a bug or a hostile peer ends that one
connection, never the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import ssl
import time
import uuid
import weakref
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from voiced import __version__, guard
from voiced.audio.opus_stream import HEADER as AUDIO_HEADER
from voiced.errors import ConfigError
from voiced.notify import Notifier
from voiced.outbox import Outbox
from voiced.relay import auth, codec
from voiced.relay.bridge import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    MAX_QUEUE,
    REVOKE_CHECK_S,
    Accepted,
    Bridge,
    upstream_url,
)
from voiced.relay.config import Agent, RelaySettings
from voiced.relay.ledger import Write
from voiced.relay.refusals import Refused, agent_for
from voiced.relay.store import Store, StoreUnavailable, spool_record
from voiced.relay.web import WebApp

logger = logging.getLogger(__name__)


class RelayServer:
    """The listening server plus the state shared by its connections.

    Args:
        settings: the validated relay.yaml.
        store: the database adapter (opened by the caller).
        spool: the durable spool whose sink is ``store`` (opened by the caller).
        clock: monotonic time for rate limits (tests inject one).
        wall: epoch time for ``created_at``.
    """

    def __init__(self, settings: RelaySettings, store: Store, spool: Outbox, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.spool = spool
        self.clock = clock
        self.wall = wall
        lim = settings.limits
        self.by_address = auth.RateLimiter(lim.address_connects_per_min / 60,
                                           lim.address_connect_burst)
        self.by_device = auth.RateLimiter(lim.device_connects_per_min / 60,
                                          lim.device_connect_burst)
        self._accepted: weakref.WeakKeyDictionary[ServerConnection, Accepted] = \
            weakref.WeakKeyDictionary()
        self.bridges: set[Bridge] = set()
        self.db_ready = False
        self.counters: dict[str, int] = {"accepted": 0, "refused": 0, "spooled": 0,
                                         "written": 0, "malformed_upstream": 0}
        self._server: Server | None = None
        self.port = settings.server.port
        self.web: WebApp | None = None
        if settings.web.path is not None:
            self.web = WebApp(settings, store, clock=clock, db_ready=lambda: self.db_ready,
                              client_address=self.client_address)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Listen."""
        s = self.settings.server
        tls: ssl.SSLContext | None = None
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                tls.load_cert_chain(s.tls_cert_file, s.tls_key_file)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError([("server.tls", f"cannot load the certificate and key: "
                                                  f"{e}")]) from None
        origins: list[Any] | None = None
        if s.allowed_origins is not None:
            origins = [None, *s.allowed_origins]  # devices send no Origin
        try:
            self._server = await serve(
                self._handle, s.host, s.port, process_request=self._process_request,
                select_subprotocol=self._select_subprotocol, origins=origins,
                process_response=self._process_response,
                compression=None, max_size=self.settings.limits.max_frame_bytes,
                max_queue=MAX_QUEUE, open_timeout=s.handshake_timeout_s,
                ping_interval=20, ping_timeout=20, close_timeout=5, ssl=tls,
                server_header=f"voiced-relay/{__version__}")
        except OSError as e:
            raise ConfigError([("server.port", f"cannot listen on {s.host}:{s.port}: "
                                               f"{e.strerror or e}")]) from None
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """The URL devices use (without query)."""
        s = self.settings.server
        scheme = "wss" if s.tls_cert_file else "ws"
        host = f"[{s.host}]" if ":" in s.host else s.host
        return f"{scheme}://{host}:{self.port}{s.path}"

    @property
    def page_url(self) -> str | None:
        """The browser client's URL, or None when the relay serves no page."""
        if self.settings.web.path is None:
            return None
        base = self.url.replace("ws", "http", 1)
        return base[:len(base) - len(self.settings.server.path)] + self.settings.web.path

    async def aclose(self) -> None:
        """Stop listening; close every device with 1001 (they reconnect elsewhere)."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

    # ---------------------------------------------------------------- handshake

    @staticmethod
    def _select_subprotocol(conn: ServerConnection,
                            offered: Any) -> Subprotocol | None:
        return auth.SUBPROTOCOL if auth.SUBPROTOCOL in offered else None  # type: ignore[return-value]

    def client_address(self, conn: ServerConnection, req: Request) -> str:
        """The peer, or the client a trusted proxy names in X-Forwarded-For."""
        peer = conn.remote_address[0] if conn.remote_address else "?"
        proxies = self.settings.server.trusted_proxies
        forwarded = req.headers.get("X-Forwarded-For")
        if proxies and forwarded:
            try:
                if any(ipaddress.ip_address(peer) in net for net in proxies):
                    last = forwarded.split(",")[-1].strip()
                    return str(ipaddress.ip_address(last))
            except ValueError:
                pass
        return str(peer)

    async def _process_request(self, conn: ServerConnection, req: Request) -> Response | None:
        if self.web is not None and urlsplit(req.path).path != self.settings.server.path \
                and self.web.handles(req.path):
            try:
                return await self.web.respond(conn, req)
            except Exception as e:  # noqa: BLE001 - a bug answers 500, never ends the relay
                guard.note_fault("relay web", e, logger)
                return conn.respond(HTTPStatus.INTERNAL_SERVER_ERROR, "relay error\n")
        try:
            self._accepted[conn] = await self.check(conn, req)
            return None
        except Refused as r:
            self.counters["refused"] += 1
            if guard.should_log(f"refused:{r.status}") is not None:
                logger.info("refused a connection from %s: %s %s", guard.printable(
                    conn.remote_address[0] if conn.remote_address else "?"),
                    int(r.status), r.log or r.text)
            resp = conn.respond(r.status, r.text + "\n")
            if r.retry_after is not None:
                resp.headers["Retry-After"] = str(max(1, round(r.retry_after)))
            if r.status == HTTPStatus.UNAUTHORIZED:
                resp.headers["WWW-Authenticate"] = 'Bearer realm="voiced-relay"'
            return resp

    def _process_response(self, conn: ServerConnection, req: Request,
                          resp: Response) -> None:
        # opus: the answer to the device's Voiced-Audio offer, on the 101
        acc = self._accepted.get(conn)
        if acc is not None and acc.audio_answer is not None and resp.status_code == 101:
            resp.headers[AUDIO_HEADER] = acc.audio_answer

    async def check(self, conn: ServerConnection, req: Request) -> Accepted:
        """Everything the handshake checks, in order; raises :class:`Refused`."""
        now = self.clock()
        parts = urlsplit(req.path)
        if parts.path != self.settings.server.path:
            raise Refused(HTTPStatus.NOT_FOUND, "no relay at this path")
        address = self.client_address(conn, req)
        wait = self.by_address.allow(address, now)
        if wait is not None:
            raise Refused(HTTPStatus.TOO_MANY_REQUESTS, "too many connection attempts from "
                          "this address", retry_after=wait)
        if len(self.bridges) + len(self._accepted) >= self.settings.server.max_connections:
            raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "the relay is full", retry_after=5)
        token, source = auth.token_from(req.headers, req.headers.get("Sec-WebSocket-Protocol"))
        if token is None:
            raise Refused(HTTPStatus.UNAUTHORIZED, "a device token is required",
                          log=f"it sent {source}")
        if not self.db_ready:
            raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "the relay's database is not "
                          "ready", retry_after=5)
        try:
            device = await self.store.device_for_token(token)
            if device is None or device.revoked:
                why = "a revoked token" if device else "an unknown token"
                raise Refused(HTTPStatus.UNAUTHORIZED, "unknown or revoked device token",
                              log=f"{why}" + (f" of {device.name}" if device else ""))
            wait = self.by_device.allow(device.name, now)
            if wait is not None:
                raise Refused(HTTPStatus.TOO_MANY_REQUESTS, "too many connection attempts "
                              "by this device", retry_after=wait)
            query = parse_qs(parts.query, keep_blank_values=True)
            if any(len(v) > 1 for v in query.values()):
                raise Refused(HTTPStatus.BAD_REQUEST, "a query parameter appears twice")
            agent = await agent_for(self.store, query)
            voice = (query.get("voice") or [""])[0] or agent.voice
            if voice not in agent.voices:
                raise Refused(HTTPStatus.BAD_REQUEST, f"voice {voice[:20]!r} is not allowed "
                              f"for agent {agent.id}; allowed: {', '.join(agent.voices)}")
            cid = (query.get("conversation_id") or [""])[0] or None
            if cid is not None:
                try:
                    cid = str(uuid.UUID(cid))
                except ValueError:
                    raise Refused(HTTPStatus.BAD_REQUEST,
                                  "conversation_id is not a UUID") from None
                # one answer for "unknown" and "another device's": no oracle for ids
                if await self.store.conversation_device(cid) != device.name:
                    raise Refused(HTTPStatus.NOT_FOUND, f"no conversation {cid} for this "
                                  "device (leave conversation_id out to start one)")
        except StoreUnavailable as e:
            raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "the relay's database is "
                          "unavailable", retry_after=5, log=str(e)) from None
        audio, answer = codec.offer_from(  # opus: taken or declined
            req.headers, enabled=self.settings.audio.opus)
        return Accepted(device=device.name, agent=agent, voice=voice, conversation_id=cid,
                        address=address, audio=audio, audio_answer=answer)

    # ---------------------------------------------------------------- connections

    async def _handle(self, conn: ServerConnection) -> None:
        accepted = self._accepted.pop(conn, None)
        if accepted is None:  # cannot happen: process_request accepted it
            await conn.close(CLOSE_INTERNAL, "relay error")
            return
        self.counters["accepted"] += 1
        bridge = Bridge(self, conn, accepted)
        self.bridges.add(bridge)
        try:
            with guard.contain("relay connection", logger):
                await bridge.run()
        finally:
            self.bridges.discard(bridge)
            if conn.close_code is None:  # a contained bug: the device must not hang
                with contextlib.suppress(Exception):
                    await conn.close(CLOSE_INTERNAL, "relay error")

    async def persist(self, writes: tuple[Write, ...]) -> None:
        """Make ``writes`` durable: PostgreSQL, else the spool (fsynced) before returning."""
        ids = [spool_record(w)["id"] for w in writes]
        try:
            await asyncio.wait_for(self.store.write(writes),
                                   self.settings.database.write_timeout_s)
            self.counters["written"] += len(writes)
            logger.debug("written: %s", ids)
            return
        except (StoreUnavailable, TimeoutError) as e:
            skipped = guard.should_log("spooling")
            if skipped is not None:
                logger.warning("transcripts go to the spool (%s)%s",
                               guard.printable(str(e) or "the write timed out"),
                               f"; {skipped} more since" if skipped else "")
        for w in writes:
            self.spool.put(spool_record(w))
        await self.spool.flush()
        self.counters["spooled"] += len(writes)
        logger.debug("spooled: %s", ids)

    async def close_revoked(self) -> int:
        """End the open connections of devices revoked since they connected."""
        names = sorted({b.acc.device for b in self.bridges})
        if not names:
            return 0
        gone = await self.store.revoked(names)
        closing = [b for b in list(self.bridges) if b.acc.device in gone]
        for b in closing:
            logger.warning("device %s was revoked: closing its connection", b.acc.device)
            await b.conn.close(CLOSE_POLICY, "device token revoked")
        return len(closing)

    def status(self) -> str:
        """One line for STATUS=."""
        pending = self.spool.pending
        return (f"{len(self.bridges)} device connection(s); database "
                f"{'ok' if self.db_ready else 'not ready'}"
                + (f"; {pending} transcript(s) spooled" if pending else ""))


async def _prepare_db(relay: RelayServer, store: Store, agents: tuple[Agent, ...],
                      notifier: Notifier) -> None:
    """Apply the schema and the agents, retrying until the database answers."""
    delay = 1.0
    while True:
        try:
            await store.prepare(agents)
            relay.db_ready = True
            logger.info("database ready (%d agent(s) from the config)", len(agents))
            notifier.status(relay.status())
            return
        except StoreUnavailable as e:
            logger.warning("database not ready: %s; retrying in %.0f s", e, delay)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)


async def _status_loop(relay: RelayServer, notifier: Notifier) -> None:
    """STATUS= when it changes; revoked devices' connections closed every REVOKE_CHECK_S."""
    last = ""
    checked = time.monotonic()
    while True:
        line = relay.status()
        if line != last:
            notifier.status(line)
            last = line
        if time.monotonic() - checked >= REVOKE_CHECK_S and relay.db_ready:
            checked = time.monotonic()
            try:
                await relay.close_revoked()
            except StoreUnavailable as e:
                logger.debug("revocation check skipped: %s", e)
        await asyncio.sleep(5)


async def run_relay(settings: RelaySettings, *, notifier: Notifier | None = None) -> int:
    """`voiced relay`: serve until SIGTERM/SIGINT; returns the exit status."""
    notifier = notifier or Notifier()
    store = Store(settings.database)
    spool = Outbox(settings.spool.dir, store, max_records=settings.spool.max_records,
                   max_bytes=settings.spool.max_bytes, retry_max_s=settings.spool.retry_max_s)
    try:
        spool.open()
    except OSError as e:
        raise ConfigError([("spool.dir", f"cannot use {settings.spool.dir}: "
                                         f"{e.strerror or e}")]) from None
    await store.open()
    relay = RelayServer(settings, store, spool)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    try:
        await relay.start()
        prepare = asyncio.create_task(_prepare_db(relay, store, settings.agents, notifier))
        tasks.append(prepare)
        # wait a little for the database, so the first devices are not refused for nothing
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(prepare), settings.database.timeout_s)
        tasks += [asyncio.create_task(spool.run()), asyncio.create_task(notifier.watchdog()),
                  asyncio.create_task(_status_loop(relay, notifier))]
        print(f"voiced relay: listening on {relay.url}", flush=True)
        if relay.page_url is not None:
            print(f"voiced relay: the browser client is at {relay.page_url}", flush=True)
        notifier.ready()
        await stop.wait()
        logger.info("stopping: closing %d device connection(s)", len(relay.bridges))
        notifier.stopping()
    finally:
        await relay.aclose()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await spool.aclose()  # spooled records are on disk; the sink closes with it
        await store.aclose()
    return 0


__all__ = ["Accepted", "Bridge", "Refused", "RelayServer", "run_relay", "upstream_url"]
