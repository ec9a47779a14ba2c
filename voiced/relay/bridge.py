"""One device connection and its upstream session: the relay's bridge.

After the handshake (voiced/relay/server.py) the bridge opens the upstream session with
the relay's key, configures it from the agent, creates the conversation if the device
gave none, hands the device ``session.created`` (already showing the agent's
configuration) and ``conversation_created``, and pumps both ways until either side ends.
It runs inside ``guard.contain``: a bug or a hostile peer ends that one connection,
never the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from voiced import __version__, guard
from voiced.audio.opus_stream import AudioOffer
from voiced.link import AUTH_CLOSE_CODE, REQUEST_SHAPE_CLOSE_CODE, classify
from voiced.relay import auth, codec
from voiced.relay.config import Agent
from voiced.relay.ledger import SETUP_EVENT_ID, Ledger, encode
from voiced.relay.store import StoreUnavailable

if TYPE_CHECKING:
    from voiced.relay.server import RelayServer

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
