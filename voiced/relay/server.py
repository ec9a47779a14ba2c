"""`voiced relay`: the WebSocket server devices connect to, and one bridge per device.

Handshake (before any upstream connection): the path, a per-address rate limit, the
device token (401), a per-device rate limit (429), the agent (400/404), the voice (400)
and the conversation (400/404: it must be this device's). Any database trouble is a
503. Then the bridge opens the upstream session with the relay's key, configures it
from the agent, creates the conversation if the device gave none, hands the device
``session.created`` (already showing the agent's configuration) and
``conversation_created``, and pumps both ways until either side ends.

Each bridge runs inside ``guard.contain``: a bug or a hostile peer ends that one
connection, never the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import ssl
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from voiced import __version__, guard
from voiced.audio.opus_stream import HEADER as AUDIO_HEADER
from voiced.audio.opus_stream import AudioOffer
from voiced.errors import ConfigError
from voiced.link import AUTH_CLOSE_CODE, REQUEST_SHAPE_CLOSE_CODE, classify
from voiced.notify import Notifier
from voiced.outbox import Outbox
from voiced.relay import auth, codec
from voiced.relay.config import Agent, RelaySettings
from voiced.relay.ledger import SETUP_EVENT_ID, Ledger, Write, encode
from voiced.relay.refusals import Refused, agent_for
from voiced.relay.store import Store, StoreUnavailable, spool_record
from voiced.relay.web import WebApp

logger = logging.getLogger(__name__)

UPSTREAM_MAX_FRAME: Final = 4 * 1024 * 1024
"""Largest upstream frame accepted (upstream's own are a few kB; audio deltas small)."""
MAX_QUEUE: Final = 8
"""Frames websockets buffers per direction before it stops reading (bounded memory)."""
REVOKE_CHECK_S: Final = 30.0
"""Open connections of a revoked device end within this (plus 5 s)."""
MAX_EARLY_EVENTS: Final = 64
"""Upstream events held while the relay's own session.update is answered."""

# close codes the relay uses towards devices (documented in docs/architecture.md)
CLOSE_GOING_AWAY: Final = 1001  # relay stopping, or upstream's own 1001 (session expired)
CLOSE_POLICY: Final = 1008  # too many frames, too many refused frames
CLOSE_INTERNAL: Final = 1011  # upstream refused the relay (key, agent) or was lost
CLOSE_TRY_LATER: Final = 1013  # upstream or database unreachable at set-up


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the handshake established for one connection."""

    device: str
    agent: Agent
    voice: str
    conversation_id: str | None
    """None: the device gave none; the bridge creates one."""
    address: str
    audio: AudioOffer | None = None
    """The device's Opus offer, taken (None: PCM16)."""
    audio_answer: str | None = None
    """The ``Voiced-Audio`` answer header (None: the device offered nothing)."""


class _Close(Exception):
    """End a bridge, closing the device with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def upstream_url(base: str, model: str) -> str:
    """The upstream URL with ``?model=`` (other query parameters kept)."""
    parts = urlsplit(base)
    query = [(k, v) for k, vs in parse_qs(parts.query).items() for v in vs if k != "model"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("model", model)])))


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


class Bridge:
    """One device connection and its upstream session."""

    def __init__(self, relay: RelayServer, conn: ServerConnection, acc: Accepted) -> None:
        self.relay = relay
        self.conn = conn
        self.acc = acc
        self.cid = acc.conversation_id or str(uuid.uuid4())
        self.ledger = Ledger(agent=acc.agent, device=acc.device, conversation_id=self.cid,
                             voice=acc.voice)
        lim = relay.settings.limits
        now = relay.clock()
        self.frames = auth.TokenBucket(lim.frames_per_s, lim.frames_burst, now)
        self.bad_frames = auth.TokenBucket(1.0, lim.bad_frames_burst, now)
        self.ignored_logged: set[str] = set()
        self.upstream: ClientConnection | None = None
        self._created = ""  # session.created as the device gets it
        self.codec = codec.RelayCodec(acc.audio) if acc.audio is not None else None

    def __repr__(self) -> str:
        return f"Bridge({self.acc.device}, {self.cid})"

    async def run(self) -> None:
        """Set up, then pump both ways; close both sides with a meaningful code."""
        try:
            await self._open_upstream()
            early = await self._configure()
            await self._announce()
            for frame, d in early:
                await self._to_device(frame, d)
            await self._pump()
        except _Close as c:
            logger.info("device %s: closing (%d %s)", self.acc.device, c.code, c.reason)
            with contextlib.suppress(ConnectionClosed):
                await self.conn.close(c.code, c.reason[:120])
        except ConnectionClosed:
            pass  # the device went away mid-set-up
        finally:
            if self.upstream is not None:
                await self.upstream.close()
            if self.codec is not None and (self.codec.bad_packets or self.codec.bad_payloads):
                logger.info("device %s: Opus: %d bad packet(s) concealed, %d malformed "
                            "payload(s) refused", self.acc.device, self.codec.bad_packets,
                            self.codec.bad_payloads)

    async def _open_upstream(self) -> None:
        up = self.relay.settings.upstream
        key = up.api_key.reveal() if up.api_key else None
        try:
            self.upstream = await connect(
                upstream_url(up.url, self.acc.agent.model),
                additional_headers={"Authorization": f"Bearer {key}"} if key else {},
                open_timeout=up.connect_timeout_s, ping_interval=up.keepalive_s,
                ping_timeout=up.keepalive_s, close_timeout=5, max_size=UPSTREAM_MAX_FRAME,
                max_queue=MAX_QUEUE, compression=None,
                user_agent_header=f"voiced-relay/{__version__}")
        except Exception as e:  # noqa: BLE001 - classified, then the device is told
            err = classify(e)
            logger.warning("device %s: upstream unreachable: %s", self.acc.device, err)
            raise _Close(CLOSE_INTERNAL if err.auth else CLOSE_TRY_LATER,
                         "upstream refused the relay's key" if err.auth
                         else "upstream unavailable") from None

    async def _recv_upstream(self) -> tuple[str, dict[str, Any]]:
        assert self.upstream is not None
        timeout = self.relay.settings.upstream.connect_timeout_s
        while True:
            try:
                frame = await asyncio.wait_for(self.upstream.recv(), timeout)
            except TimeoutError:
                raise _Close(CLOSE_TRY_LATER, "upstream did not answer") from None
            except ConnectionClosed as e:
                raise self._upstream_closed(e) from None
            d = self._parse_upstream(frame)
            if d is not None:
                return str(frame), d

    async def _configure(self) -> list[tuple[str, dict[str, Any]]]:
        """session.created, the relay's own session.update, and its answer.

        Returns upstream events that came meanwhile (forwarded after the set-up).
        """
        assert self.upstream is not None
        frame, created = await self._recv_upstream()
        if created["type"] != "session.created":
            # upstream refuses with an error event, then a close whose code says why
            with contextlib.suppress(TimeoutError, _Close):
                await asyncio.wait_for(self._recv_upstream(), 2)
            if self.upstream.protocol.close_rcvd is not None:
                raise self._upstream_closed(None)
            raise self._refusal(created, "upstream did not start a session")
        await self.upstream.send(encode(self.ledger.setup_update()))
        early: list[tuple[str, dict[str, Any]]] = []
        while True:
            f, d = await self._recv_upstream()
            if d["type"] == "session.updated" and isinstance(d.get("session"), dict):
                effective = d["session"]
                break
            if d["type"] == "error" and isinstance(d.get("error"), dict) \
                    and d["error"].get("event_id") == SETUP_EVENT_ID:
                raise self._refusal(d, f"upstream refused agent {self.acc.agent.id}'s "
                                       "configuration")
            early.append((f, d))
            if len(early) > MAX_EARLY_EVENTS:
                raise _Close(CLOSE_INTERNAL, "upstream sent too much before configuring")
        session = created.get("session")
        merged = {**session, **effective} if isinstance(session, dict) else effective
        self.ledger.configured(merged)
        # the device sees a session that already shows the agent's configuration, and
        # every session.updated it gets from now on answers a session.update of its own
        self._created = encode({**created, "session": merged})
        return early

    def _refusal(self, d: dict[str, Any], what: str) -> _Close:
        err = d.get("error")
        message = err.get("message") if isinstance(err, dict) else err
        logger.error("device %s: %s: %s", self.acc.device, what, guard.printable(message))
        return _Close(CLOSE_INTERNAL, what)

    async def _announce(self) -> None:
        created = self.acc.conversation_id is None
        if created:
            try:
                await self.relay.store.create_conversation(self.cid, self.acc.agent.id,
                                                           self.acc.device)
            except StoreUnavailable as e:
                logger.warning("device %s: %s", self.acc.device, e)
                raise _Close(CLOSE_TRY_LATER, "database unavailable") from None
        await self.conn.send(self._created)
        if created:
            await self.conn.send(encode({"type": "conversation_created",
                                         "conversation_id": self.cid}))
        logger.info("device %s: %s conversation %s with agent %s (voice %s, model %s)",
                    self.acc.device, "new" if created else "continuing", self.cid,
                    self.acc.agent.id, self.ledger.voice, self.ledger.model)

    async def _pump(self) -> None:
        down = asyncio.create_task(self._downstream())
        up = asyncio.create_task(self._upstream_pump())
        try:
            done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (down, up):
                t.cancel()
            await asyncio.gather(down, up, return_exceptions=True)
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc

    async def _upstream_pump(self) -> None:
        """Device → upstream, through the allow-list."""
        assert self.upstream is not None
        async for frame in self.conn:
            now = self.relay.clock()
            if not self.frames.take(now):
                raise _Close(CLOSE_POLICY, "too many frames")
            if self.codec is not None and isinstance(frame, bytes):  # opus: mic audio
                pcm_append, refusal = self.codec.from_device(frame)
                if refusal is not None:
                    if not self.bad_frames.take(now):
                        raise _Close(CLOSE_POLICY, "too many refused frames")
                    await self.conn.send(refusal)
                if pcm_append is None:
                    continue
                frame = pcm_append
            v = self.ledger.from_device(frame)
            if v.refusal is not None:
                if not self.bad_frames.take(now):
                    raise _Close(CLOSE_POLICY, "too many refused frames")
                await self.conn.send(v.refusal)
                continue
            for part in v.ignored:
                if part not in self.ignored_logged and len(self.ignored_logged) < 64:
                    self.ignored_logged.add(part)
                    logger.info("device %s: ignoring relay-owned %s (agent %s)",
                                self.acc.device, guard.printable(part, 80), self.acc.agent.id)
            assert v.upstream is not None
            if self.codec is not None:  # opus: a commit or clear ends the device's stream
                self.codec.after_device_event(v.upstream)
            try:
                await self.upstream.send(v.upstream)
            except ConnectionClosed:
                return  # the other pump reports why

    async def _downstream(self) -> None:
        """Upstream → device, writing transcripts first."""
        assert self.upstream is not None
        try:
            async for frame in self.upstream:
                d = self._parse_upstream(frame)
                if d is not None:
                    await self._to_device(str(frame), d)
        except ConnectionClosed as e:
            raise self._upstream_closed(e) from None
        raise self._upstream_closed(None)

    def _parse_upstream(self, frame: str | bytes) -> dict[str, Any] | None:
        """An upstream frame as a dict with a string type, else None (counted, logged)."""
        why = ""
        d: Any = None
        if isinstance(frame, bytes):
            why = f"a binary frame of {len(frame)} bytes"
        else:
            try:
                d = json.loads(frame)
            except (ValueError, RecursionError) as e:
                why = f"not JSON ({type(e).__name__})"
            else:
                if not isinstance(d, dict) or not isinstance(d.get("type"), str):
                    why = "not an event object"
        if not why:
            return d  # type: ignore[no-any-return]
        self.relay.counters["malformed_upstream"] += 1
        if guard.should_log("malformed upstream") is not None:
            logger.warning("device %s: dropped a malformed upstream frame: %s",
                           self.acc.device, why)
        return None

    async def _to_device(self, frame: str, d: dict[str, Any]) -> None:
        v = self.ledger.from_upstream(d["type"], frame, d, self.relay.wall())
        if v.malformed is not None and guard.should_log("unreadable upstream") is not None:
            logger.warning("device %s: could not read %s", self.acc.device,
                           guard.printable(v.malformed))
        if v.writes:
            await self.relay.persist(v.writes)
        if self.codec is None:
            await self.conn.send(frame)
            return
        for out in self.codec.to_device(d["type"], frame, d):  # opus: replies encoded
            await self.conn.send(out)

    def _upstream_closed(self, e: ConnectionClosed | None) -> _Close:
        rcvd = e.rcvd if e is not None else (self.upstream.protocol.close_rcvd
                                              if self.upstream else None)
        if rcvd is None:
            return _Close(CLOSE_INTERNAL, "upstream connection lost")
        if rcvd.code == AUTH_CLOSE_CODE:
            logger.error("upstream refused the relay's API key (%s)",
                         guard.printable(rcvd.reason))
            return _Close(CLOSE_INTERNAL, "upstream refused the relay's key")
        if rcvd.code == REQUEST_SHAPE_CLOSE_CODE:
            logger.error("upstream refused agent %s's session (%s)", self.acc.agent.id,
                         guard.printable(rcvd.reason))
            return _Close(CLOSE_INTERNAL, f"upstream refused the session: {rcvd.reason}")
        if rcvd.code in (1000, 1001):
            return _Close(rcvd.code, rcvd.reason)  # e.g. 1001 session_expired
        return _Close(CLOSE_INTERNAL, f"upstream closed ({rcvd.code})")


# -------------------------------------------------------------------- the process


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
