"""A Realtime connection link: open, reader, sender, keepalive, retire, classify.

One module for every WebSocket connection voiced makes to a Realtime server: the
device's live and standby sessions (:class:`Link`) and, for opening and classifying, the
relay's upstream. It knows nothing about the conversation: what arrives goes to the
``on_frame`` callback, and what is put on the queue is sent in order by one task.

What a failure says is built from status codes, close codes and our own words, never
from a handshake exception's text: websockets quotes the offending header in it, and
that header can be ``Authorization: Bearer <key>`` (issue 17, finding 1). A close reason
is server text, so it goes through ``guard.printable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidHeader,
    InvalidStatus,
    InvalidURI,
)

from voiced import guard, wire
from voiced.errors import RealtimeError

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024  # the API's own limit is 15 MiB per event
AUTH_CLOSE_CODE: Final = 3000  # invalid_api_key, missing bearer
REQUEST_SHAPE_CLOSE_CODE: Final = 4000  # invalid_model, beta_api_shape_disabled
_TOO_BIG_CLOSE_CODE: Final = 1009  # we closed: a frame over MAX_FRAME_BYTES
_INTERNAL_CLOSE_CODE: Final = 1011  # we closed: websockets' keepalive ping timed out
_REDIRECTS: Final = (300, 301, 302, 303, 307, 308)
_APPEND: Final = "input_audio_buffer.append"
# one joined append at most (base64 characters): about 1 s of 24 kHz PCM16
_MAX_APPEND_CHARS: Final = 64_000


class _NoRedirects(connect):
    """websockets' ``connect`` that reports a redirect instead of following it.

    *Why not follow:* the Realtime API does not redirect, so a redirect is a
    misconfiguration or an attack. Following it would skip the config's rule (wss://, or
    ws:// to loopback only: websockets forbids only a wss→ws downgrade, so ws://127.0.0.1
    could be sent on to plain ws:// anywhere), and cross-origin websockets drops the
    bearer header, so the new host would refuse us with a misleading auth error.
    """

    def process_redirect(self, exc: Exception) -> Exception | str:
        """Never a URL to follow: the 3xx surfaces as the InvalidStatus it is."""
        return exc


async def open_connection(url: str, api_key: str | None, *, timeout_s: float,
                          user_agent: str, keepalive_s: float = 20.0,
                          extra_headers: dict[str, str] | None = None) -> ClientConnection:
    """Open the WebSocket with bearer auth (GA: no ``OpenAI-Beta`` header).

    Raises:
        RealtimeError: classified by :func:`classify`.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    headers.update(extra_headers or {})  # opus: the relay audio offer
    try:
        return await _NoRedirects(
            url, additional_headers=headers, open_timeout=timeout_s,
            # NOTE: our own pings notice a dead peer within two keepalive periods
            ping_interval=keepalive_s, ping_timeout=keepalive_s, close_timeout=5,
            max_size=MAX_FRAME_BYTES, compression=None,
            user_agent_header=user_agent,
        )
    except Exception as e:  # noqa: BLE001 - every failure is classified, none escapes raw
        raise classify(e) from e


def classify(exc: BaseException) -> RealtimeError:
    """Decide what a connection failure means: retry soon, retry slowly (auth), or stop.

    auth refused (HTTP 401/403, close 3000), or a key that cannot be sent as a header →
    ``auth=True`` (error state, slow retries); request-shape refusal (close 4000: bad
    model, beta dialect) → not retryable (the supervisor decides when that is final);
    everything else (DNS, TCP, TLS, 1006, 1009, 1011, 5xx, redirects, timeouts) → retry
    with backoff.
    """
    if isinstance(exc, RealtimeError):
        return exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return RealtimeError(f"the server refused the API key (HTTP {status})",
                                 retryable=True, auth=True)
        if status in _REDIRECTS:
            return RealtimeError(f"the server redirected (HTTP {status}) to "
                                 f"{_origin(exc.response.headers.get('Location'))}; "
                                 "redirects are not followed: set realtime.url to the "
                                 "final address", retryable=True)
        return RealtimeError(f"handshake refused with HTTP {status}", retryable=True)
    if isinstance(exc, ConnectionClosed):
        return _closed(exc)
    if isinstance(exc, TimeoutError):
        return RealtimeError("timed out", retryable=True)
    if isinstance(exc, InvalidHeader):
        # NOTE: its text quotes the header's value, which may be "Bearer <key>"
        if exc.name.lower() == "authorization":
            return RealtimeError("the API key cannot be sent: it is not one header-safe "
                                 "line (invalid Authorization header); check credential "
                                 "openai_api_key", retryable=True, auth=True)
        return RealtimeError(f"handshake failed: invalid {guard.printable(exc.name, 60)} "
                             "header", retryable=True)
    if isinstance(exc, InvalidURI):
        return RealtimeError("handshake failed: realtime.url is not a valid WebSocket URL",
                             retryable=True)
    if isinstance(exc, InvalidHandshake):
        return RealtimeError(f"handshake failed ({type(exc).__name__})", retryable=True)
    if isinstance(exc, OSError):
        return RealtimeError(f"cannot connect: {guard.printable(exc.strerror or exc)}",
                             retryable=True)
    return RealtimeError(f"{type(exc).__name__}: {guard.printable(exc)}", retryable=True)


def _closed(exc: ConnectionClosed) -> RealtimeError:
    """What a closed connection means, in words that tell the causes apart."""
    frame = exc.rcvd
    if frame is None:
        sent = exc.sent
        if sent is not None and sent.code == _TOO_BIG_CLOSE_CODE:
            return RealtimeError(f"the server sent a frame too big (over "
                                 f"{MAX_FRAME_BYTES >> 20} MiB; closed 1009)", retryable=True)
        if sent is not None and sent.code == _INTERNAL_CLOSE_CODE and "keepalive" in sent.reason:
            return RealtimeError("no answer to keepalive pings (the server or the network "
                                 "went silent)", retryable=True)
        return RealtimeError("connection lost (1006: no close frame)", retryable=True)
    reason = f"server closed {frame.code}" + (
        f": {guard.printable(frame.reason, 123)}" if frame.reason else "")
    if frame.code == AUTH_CLOSE_CODE:
        return RealtimeError(reason, retryable=True, auth=True)
    if frame.code == REQUEST_SHAPE_CLOSE_CODE:
        return RealtimeError(reason, retryable=False)
    return RealtimeError(reason, retryable=True)


def _origin(location: str | None) -> str:
    """Where a redirect points, as scheme://host[:port] only.

    Its path or query may carry someone else's token.
    """
    if not location:
        return "nowhere"
    try:
        parts = urlsplit(location)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an invalid address"
    return guard.printable(f"{parts.scheme or '?'}://{host}{port}", 120)


class FrameCodec(Protocol):
    """What a link passes its frames through (``voiced/opus_link.py``: Opus with a relay).

    A link without one sends and reads the Realtime API's JSON events as they are.
    """

    def outgoing(self, event: wire.ClientEvent) -> list[wire.ClientEvent | bytes]:
        """What to send for one queued client event (bytes: a binary frame)."""
        ...

    def incoming(self, frame: str | bytes) -> str | bytes:
        """A received frame as the core reads it."""
        ...

    def flush(self) -> list[bytes]:
        """What ends the audio the codec still holds (sent before a retired link closes)."""
        ...


Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]
"""Starts a task: the supervisor's puts it in its task group (``TaskGroup.create_task``)."""


def create_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A :data:`Spawn` outside any task group (a link used on its own)."""
    return asyncio.create_task(coro, name=name)


class Link:
    """One connection: its socket, its send queue, its reader and its sender.

    The reader hands every frame to ``on_frame`` and ends with the connection, keeping
    the classified :class:`~voiced.errors.RealtimeError` in :attr:`failure` (it never
    raises it: a task group's task that raised would end the daemon); ``on_end`` runs
    when it ends, however. The sender sends what :meth:`send` queued, in order, and ends
    quietly when the connection does.

    Args:
        ws: the open connection (:func:`open_connection`).
        on_frame: called with each frame received, on the event loop.
        on_end: called once the reader has ended.
        spawn: starts the reader and the sender (the supervisor's task group).
        codec: what this connection's frames pass through (negotiated at its
            handshake); None: the JSON events as they are.
    """

    def __init__(self, ws: ClientConnection, on_frame: Callable[[str | bytes], None],
                 on_end: Callable[[], None] | None = None,
                 spawn: Spawn = create_task, codec: FrameCodec | None = None) -> None:
        self.ws = ws
        self.codec = codec  # opus: negotiated with a relay
        self._sending = asyncio.Lock()  # held while one queued event's frames go out
        self.failure: RealtimeError | None = None
        self._spawn = spawn
        self.queue: asyncio.Queue[wire.ClientEvent] = asyncio.Queue()
        self._held: wire.ClientEvent | None = None  # taken off the queue by a join, not sent
        self.tasks: list[asyncio.Task[None]] = []
        self._on_frame = on_frame
        self._on_end = on_end

    def start(self) -> None:
        """Start the reader and the sender."""
        self.tasks += [self._spawn(self._read(), "realtime-read"),
                       self._spawn(self._send(), "realtime-send")]

    @property
    def reader(self) -> asyncio.Task[None]:
        """The reader task: it ends when the connection does."""
        return self.tasks[0]

    def raise_failure(self) -> None:
        """Raise why the connection ended (classified), if it failed."""
        if self.failure is not None:
            raise self.failure

    def send(self, event: wire.ClientEvent) -> None:
        """Queue a client event; the sender sends it after those queued before."""
        self.queue.put_nowait(event)

    async def aclose(self, reason: str = "") -> None:
        """Close the connection (1000) and wait for the reader and the sender to end."""
        await self.ws.close(1000, reason)
        for task in self.tasks[1:]:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def retire(self, reason: str) -> None:
        """Close the connection once what was queued for it is sent."""
        for _ in range(50):
            if self.queue.empty() and self._held is None:
                break
            await asyncio.sleep(0.02)
        if self.codec is not None:  # opus: the microphone's last samples, not lost
            async with self._sending:  # after the frames of the last event taken
                with contextlib.suppress(Exception):  # closing anyway
                    for frame in self.codec.flush():
                        await self.ws.send(frame)
        await self.aclose(reason)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if self.codec is not None:  # opus: reply audio back to PCM16
                    frame = self.codec.incoming(frame)
                self._on_frame(frame)
        except ConnectionClosed as e:
            self.failure = classify(e)
            self.failure.__cause__ = e
        except Exception as e:  # noqa: BLE001 - the connection is lost, not the daemon
            guard.note_fault("realtime read", e, logger)
            self.failure = RealtimeError(f"unexpected error reading ({type(e).__name__})",
                                         retryable=True)
            self.failure.__cause__ = e
        finally:
            if self._on_end is not None:
                self._on_end()

    async def _send(self) -> None:
        debug = logger.isEnabledFor(logging.DEBUG)
        while True:
            if self._held is None:
                event = await self.queue.get()
            else:
                event, self._held = self._held, None
            if event["type"] == _APPEND and self.codec is None and not self.queue.empty():
                event, self._held = self._coalesce(event)
            if debug:
                logger.debug("send %s", guard.printable(wire.describe(event)))
            async with self._sending:
                if not await self._send_one(event):
                    return

    def _coalesce(self, first: wire.InputAudioBufferAppendParam
                  ) -> tuple[wire.ClientEvent, wire.ClientEvent | None]:
        """The appends queued behind ``first`` joined into one, and what ended the run.

        The event that ended the run was taken from the queue; the caller sends it next.

        *Why:* the mic hands its frames over a block at a time; one append per block is
        one socket send and one turn of the sender instead of one per 20 ms frame (issue
        21). The server's VAD takes whatever is appended. Anything but an append ends
        the run, so a commit or a clear falls exactly between the samples it fell
        between. Base64 of whole 3-byte groups joins as text; a part with padding ends
        the run. At most ``_MAX_APPEND_CHARS`` (about 1 s) go in one.
        """
        parts = [first["audio"]]
        size = len(parts[0])
        while not self.queue.empty() and size < _MAX_APPEND_CHARS \
                and not parts[-1].endswith("="):
            nxt = self.queue.get_nowait()
            if nxt["type"] != _APPEND:
                return self._joined(first, parts), nxt
            parts.append(nxt["audio"])
            size += len(nxt["audio"])
        return self._joined(first, parts), None

    @staticmethod
    def _joined(first: wire.InputAudioBufferAppendParam,
                parts: list[str]) -> wire.ClientEvent:
        if len(parts) == 1:
            return first
        return {"type": _APPEND, "event_id": first["event_id"], "audio": "".join(parts)}

    async def _send_one(self, event: wire.ClientEvent) -> bool:
        """Send one queued event's frames; False when the connection is gone."""
        try:
            frames = self._frames(event)
        except Exception as e:  # noqa: BLE001 - one event lost, not the connection
            guard.note_fault("realtime send", e, logger)
            return True
        for frame in frames:
            try:
                await self.ws.send(frame)
            except ConnectionClosed:
                return False  # the reader reports why
            except Exception as e:  # noqa: BLE001 - the link is lost, not the daemon
                guard.note_fault("realtime send", e, logger)
                with contextlib.suppress(Exception):
                    await self.ws.close(1011, "send failed")
                return False
        return True

    def _frames(self, event: wire.ClientEvent) -> list[str | bytes]:
        """The frames one queued event goes as: its JSON text, or what the codec makes."""
        if self.codec is None:
            return [wire.encode(event)]
        # opus: microphone audio as binary payloads, a commit ends the stream
        return [out if isinstance(out, bytes) else wire.encode(out)
                for out in self.codec.outgoing(event)]
