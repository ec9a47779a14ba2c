"""The browser client on the relay's own port: a few static files and two JSON endpoints.

Answered from websockets' ``process_request`` (the same listener as the WebSocket), so
a browser needs nothing but the relay: ``GET <web.path>`` is the page, and the page
connects to ``<server.path>`` as a device with its own token (a ``voiced-token.``
subprotocol, since a browser cannot set headers on a WebSocket).

The static files are read once at start into memory from the package (``web/``); a
request is answered by an exact lookup of its path in that table, so no request ever
touches the filesystem and no path can name anything else (no decoding, no joining).

The JSON endpoints take the token in ``Authorization: Bearer`` (``fetch`` can set it)
and are rate-limited per client address before the token is looked up:

- ``GET <web.path>api/agent?agent_id=ID``: the agent's default and allowed voices (the
  page's voice picker) and the device's name;
- ``GET <web.path>api/conversations/<uuid>[?limit=N]``: that conversation's rows, newest
  ``N`` (≤ 500), oldest first, only if the conversation is the token's device's (one
  404 for unknown and someone else's, as at the WebSocket handshake).
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from voiced import guard
from voiced.errors import ConfigError
from voiced.relay import auth
from voiced.relay.config import RelaySettings
from voiced.relay.refusals import Refused, agent_for
from voiced.relay.store import Device, Store, StoreUnavailable

logger = logging.getLogger(__name__)

ASSETS: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "voice.js": "text/javascript; charset=utf-8",
    "capture-worklet.js": "text/javascript; charset=utf-8",
    "playback-worklet.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
"""Every file the page is made of (``voiced/relay/web/``), with its Content-Type."""
TRANSCRIPT_MAX_ROWS: Final = 500
TRANSCRIPT_MAX_CHARS: Final = 8000
"""Characters of one row's content the transcript endpoint returns."""

CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'; require-trusted-types-for 'script'; "
              "trusted-types 'none'")
"""No inline script or style, nothing from elsewhere, no DOM sinks that parse HTML."""
_COMMON: Final = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "microphone=(self), camera=(), geolocation=(), usb=(), "
                           "payment=()"),
)


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file as it is served."""

    body: bytes
    content_type: str
    etag: str


def load_assets(relay_path: str, agent_id: str | None) -> dict[str, Asset]:
    """The page's files from the package; index.html learns the relay path and agent.

    Raises:
        ConfigError: a file is missing from the installed package.
    """
    folder = resources.files("voiced.relay") / "web"
    out: dict[str, Asset] = {}
    for name, ctype in ASSETS.items():
        try:
            body = (folder / name).read_bytes()
        except OSError as e:
            raise ConfigError([("web.path", f"the page's file {name} is missing from the "
                                            f"installed package ({e.strerror or e})")]) from None
        if name == "index.html":
            body = (body.decode("utf-8")
                    .replace("{{relay_path}}", html.escape(relay_path, quote=True))
                    .replace("{{agent_id}}", html.escape(agent_id or "", quote=True))
                    .encode("utf-8"))
        digest = hashlib.sha256(body).hexdigest()[:24]
        out[name] = Asset(body=body, content_type=ctype, etag=f'"{digest}"')
    return out


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header[:2000].split(",")]
    return "*" in tags or etag in tags


def _response(status: HTTPStatus, body: bytes, content_type: str, *, head: bool = False,
              extra: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = Headers([("Date", formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Type", content_type), ("Content-Length", str(len(body))),
                       *_COMMON, *extra])
    return Response(status.value, status.phrase, headers, b"" if head else body)


class WebApp:
    """The page and its endpoints for one :class:`~voiced.relay.server.RelayServer`.

    Args:
        settings: the relay's settings (``web.path`` is not None).
        store: the database (tokens, agents, transcripts).
        clock: monotonic time for the rate limits.
        db_ready: whether the database has been prepared.
        client_address: the request's client (X-Forwarded-For from trusted proxies).
    """

    def __init__(self, settings: RelaySettings, store: Store, *, clock: Callable[[], float],
                 db_ready: Callable[[], bool],
                 client_address: Callable[[Any, Request], str]) -> None:
        assert settings.web.path is not None
        self.base = settings.web.path
        self.store = store
        self.clock = clock
        self.db_ready = db_ready
        self.client_address = client_address
        lim = settings.limits
        self.limiter = auth.RateLimiter(lim.api_requests_per_min / 60, lim.api_request_burst)
        self.assets = load_assets(settings.server.path, settings.web.agent_id)
        self.counters: dict[str, int] = {"pages": 0, "api": 0, "refused": 0}
        self._routes: dict[str, Callable[[Device, str, dict[str, list[str]]],
                                         Awaitable[dict[str, Any]]]] = {
            "api/agent": self._agent, "api/conversations/": self._transcript}

    def handles(self, path: str) -> bool:
        """Whether a request for ``path`` (query included) is the page's."""
        p = urlsplit(path).path
        return p.startswith(self.base) or (self.base != "/" and p == self.base[:-1])

    async def respond(self, conn: Any, req: Request) -> Response:
        """The answer to one HTTP request under the page's path (never raises)."""
        method = getattr(req, "method", "GET")
        head = method == "HEAD"
        parts = urlsplit(req.path)
        if method not in ("GET", "HEAD"):
            return self._text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD here",
                              extra=(("Allow", "GET, HEAD"),))
        if parts.path == self.base[:-1]:
            where = self.base + (f"?{parts.query}" if parts.query else "")
            return _response(HTTPStatus.PERMANENT_REDIRECT, b"", "text/plain; charset=utf-8",
                             extra=(("Location", where),))
        rest = parts.path[len(self.base):]
        if rest.startswith("api/"):
            self.counters["api"] += 1
            return await self._api(conn, req, rest, parts.query, head)
        asset = self.assets.get(rest or "index.html")
        if asset is None:
            return self._text(HTTPStatus.NOT_FOUND, "no such file", head=head)
        self.counters["pages"] += 1
        # revalidate every time (a 304 costs nothing): a relay upgrade takes effect at
        # once, and the page's modules never mix two versions
        cache = (("Cache-Control", "no-cache"), ("ETag", asset.etag))
        if _etag_matches(req.headers.get("If-None-Match"), asset.etag):
            return _response(HTTPStatus.NOT_MODIFIED, b"", asset.content_type, head=True,
                             extra=cache)
        return _response(HTTPStatus.OK, asset.body, asset.content_type, head=head, extra=cache)

    def _text(self, status: HTTPStatus, text: str, *, head: bool = False,
              extra: tuple[tuple[str, str], ...] = ()) -> Response:
        return _response(status, (text + "\n").encode(), "text/plain; charset=utf-8",
                         head=head, extra=(("Cache-Control", "no-store"), *extra))

    # ---------------------------------------------------------------- JSON

    async def _api(self, conn: Any, req: Request, rest: str, query: str,
                   head: bool) -> Response:
        try:
            route = rest if rest in self._routes else (
                "api/conversations/" if rest.startswith("api/conversations/") else None)
            if route is None:
                raise Refused(HTTPStatus.NOT_FOUND, "no such endpoint")
            device = await self._authenticate(conn, req)
            try:
                params = parse_qs(query, keep_blank_values=True, max_num_fields=8)
            except ValueError:
                raise Refused(HTTPStatus.BAD_REQUEST, "too many query parameters") from None
            if any(len(v) > 1 for v in params.values()):
                raise Refused(HTTPStatus.BAD_REQUEST, "a query parameter appears twice")
            try:
                body = await self._routes[route](device, rest[len(route):], params)
            except StoreUnavailable as e:
                raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "the relay's database is "
                              "unavailable", retry_after=5, log=str(e)) from None
        except Refused as r:
            self.counters["refused"] += 1
            if guard.should_log(f"web refused:{int(r.status)}") is not None:
                logger.info("web: refused %s from %s: %d %s", guard.printable(rest, 80),
                            guard.printable(self.client_address(conn, req)), int(r.status),
                            r.log or r.text)
            extra: list[tuple[str, str]] = [("Cache-Control", "no-store")]
            if r.retry_after is not None:
                extra.append(("Retry-After", str(max(1, round(r.retry_after)))))
            if r.status == HTTPStatus.UNAUTHORIZED:
                extra.append(("WWW-Authenticate", 'Bearer realm="voiced-relay"'))
            return _response(r.status, _json({"error": r.text}),
                             "application/json; charset=utf-8", head=head, extra=tuple(extra))
        return _response(HTTPStatus.OK, _json(body), "application/json; charset=utf-8",
                         head=head, extra=(("Cache-Control", "no-store"),))

    async def _authenticate(self, conn: Any, req: Request) -> Device:
        now = self.clock()
        address = self.client_address(conn, req)
        wait = self.limiter.allow(f"addr:{address}", now)
        if wait is not None:
            raise Refused(HTTPStatus.TOO_MANY_REQUESTS, "too many requests from this address",
                          retry_after=wait)
        token, source = auth.token_from(req.headers, None)
        if token is None:
            raise Refused(HTTPStatus.UNAUTHORIZED, "a device token is required "
                          "(Authorization: Bearer <token>)", log=f"it sent {source}")
        if not self.db_ready():
            raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "the relay's database is not ready",
                          retry_after=5)
        try:
            device = await self.store.device_for_token(token)
        except StoreUnavailable as e:
            raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "the relay's database is "
                          "unavailable", retry_after=5, log=str(e)) from None
        if device is None or device.revoked:
            raise Refused(HTTPStatus.UNAUTHORIZED, "unknown or revoked device token",
                          log="a revoked token" if device else "an unknown token")
        wait = self.limiter.allow(f"device:{device.name}", now)
        if wait is not None:
            raise Refused(HTTPStatus.TOO_MANY_REQUESTS, "too many requests by this device",
                          retry_after=wait)
        return device

    async def _agent(self, device: Device, tail: str,
                     params: dict[str, list[str]]) -> dict[str, Any]:
        agent = await agent_for(self.store, params)
        return {"id": agent.id, "voice": agent.voice, "voices": list(agent.voices),
                "device": device.name}

    async def _transcript(self, device: Device, tail: str,
                          params: dict[str, list[str]]) -> dict[str, Any]:
        try:
            cid = str(uuid.UUID(tail)) if len(tail) <= 36 and "/" not in tail else ""
        except ValueError:
            cid = ""
        if not cid:
            raise Refused(HTTPStatus.BAD_REQUEST, "the conversation id is not a UUID")
        raw = (params.get("limit") or [str(TRANSCRIPT_MAX_ROWS)])[0]
        limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 6 else 0
        if not 1 <= limit <= TRANSCRIPT_MAX_ROWS:
            raise Refused(HTTPStatus.BAD_REQUEST,
                          f"limit must be a number from 1 to {TRANSCRIPT_MAX_ROWS}")
        found = await self.store.transcript(cid, device.name, limit=limit,
                                            max_chars=TRANSCRIPT_MAX_CHARS)
        if found is None:
            raise Refused(HTTPStatus.NOT_FOUND, f"no conversation {cid} for this device")
        return {"conversation_id": found.conversation_id, "agent_id": found.agent_id,
                "created_at": found.created_at, "more": found.more,
                "messages": found.messages}


def _json(value: object) -> bytes:
    # ensure_ascii: stored text may hold anything; escaped, it cannot break the encoding
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


__all__ = ["ASSETS", "CSP", "Asset", "WebApp", "load_assets"]
