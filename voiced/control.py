"""The local control socket behind `voiced ctl`.

One JSON request per connection, one JSON reply: ``{"cmd": "status"}`` →
``{"ok": true, "status": {...}}``; ``{"cmd": "volume", "percent": 40}`` sets the volume.
The socket is a unix stream socket of mode 0660, so only root and the service's group
can drive the device, and the daemon still treats every request as hostile: at most
``control.max_connections`` clients at once (more are answered "busy" and closed at
once, so no flood can use up the descriptors the Realtime connection needs), one line of
at most :data:`MAX_REQUEST` bytes, :data:`IDLE_S` to send it, and any failure in
answering is contained, counted and answered with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from voiced import guard
from voiced.config import CONTROL_SOCKET_ENV, socket_path_problem
from voiced.errors import ConfigError

logger = logging.getLogger(__name__)

COMMANDS: Final = ("status", "press", "long-press", "interrupt", "volume")
MAX_REQUEST: Final = 4096
"""Bytes in one request line."""
IDLE_S: Final = 5.0
"""A client has this long to send its request, and to take the reply."""
MAX_REPLY: Final = 1_000_000

Handler = Callable[[str, dict[str, Any]], dict[str, Any]]
"""Called with the command and its validated arguments (``percent`` for volume)."""


class ControlServer:
    """Serves `voiced ctl` requests by calling ``handler(cmd, args)`` on the event loop."""

    def __init__(self, path: Path, handler: Handler, *, max_connections: int = 8) -> None:
        self.path = path
        self.handler = handler
        self.max_connections = max_connections
        self.busy_refused = 0
        self._active = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket, replacing only a stale socket left by a crash.

        Raises:
            ConfigError: naming ``control.socket`` when it cannot be made, when something
                other than a socket is at the path, or when another daemon listens there
                (the contract: a set-up error is one line and exit 78, not a traceback).
        """
        why = socket_path_problem(self.path) or self._in_use()
        if why is not None:
            raise ConfigError([("control.socket", why)])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # a socket, checked above: a crashed daemon's
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST)
            os.chmod(self.path, 0o660)
        except OSError as e:
            # typically a developer who is not root: /run/voiced is the service's
            raise ConfigError([("control.socket", (
                f"cannot create {self.path}: {e.strerror or e}; run as the service's user "
                f"(systemctl start voiced), or point control.socket (or ${CONTROL_SOCKET_ENV})"
                " at a directory you may write, e.g. $XDG_RUNTIME_DIR/voiced.sock"))]) from e
        logger.debug("control socket at %s", self.path)

    def _in_use(self) -> str | None:
        """Whether a live daemon answers on the path (a socket is there, checked)."""
        if not self.path.is_socket():
            return None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.setblocking(False)
            try:
                s.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                return None  # stale: left by a daemon that crashed
            except BlockingIOError:
                pass  # a backlog full of clients: alive
            except OSError:
                return None
        return (f"another daemon is listening on {self.path}; stop it first, or give this "
                "one a control.socket of its own")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._active >= self.max_connections:
                self.busy_refused += 1
                if guard.should_log("control:busy") is not None:
                    logger.warning("control socket: more than %d clients at once; refusing "
                                   "the rest (%d so far)", self.max_connections,
                                   self.busy_refused)
                await self._reply(writer, {"ok": False, "error": "busy: too many clients "
                                           "at once; try again"})
                return
            self._active += 1
            try:
                await self._reply(writer, await self._answer(reader))
            finally:
                self._active -= 1
        except (TimeoutError, ConnectionError) as e:
            logger.debug("control client went away: %s", e)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            guard.note_fault("control socket", e, logger)
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_S)
        except asyncio.LimitOverrunError:
            return {"ok": False, "error": f"request too long (at most {MAX_REQUEST} bytes)"}
        except asyncio.IncompleteReadError as e:
            line = e.partial
        parsed = parse_request(line)
        if isinstance(parsed, str):
            return {"ok": False, "error": parsed}
        cmd, args = parsed
        try:
            return self.handler(cmd, args)
        except Exception as e:  # noqa: BLE001 - a bug in answering must not end the daemon
            guard.note_fault("control socket", e, logger)
            return {"ok": False, "error": "internal error (logged)"}

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), IDLE_S)

    async def aclose(self) -> None:
        """Stop serving and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def parse_request(line: bytes) -> tuple[str, dict[str, Any]] | str:
    """A request line as ``(command, arguments)``, or why it is refused."""
    try:
        req = json.loads(line)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep
        return "not a JSON object with a \"cmd\""
    if not isinstance(req, dict) or "cmd" not in req:
        return "not a JSON object with a \"cmd\""
    cmd = req["cmd"]
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        return f"unknown command; use one of {', '.join(COMMANDS)}"
    args: dict[str, Any] = {}
    if cmd == "volume" and req.get("percent") is not None:
        percent = req["percent"]
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            return "volume: percent must be a whole number 0-100"
        args["percent"] = percent
    return cmd, args


def request(path: Path, cmd: str, *, timeout_s: float = 5.0,
            **args: Any) -> dict[str, Any]:
    """Send one command (with ``args``) to a running daemon and return its reply.

    Blocking; for `voiced ctl`.

    Raises:
        OSError: no daemon listens at ``path`` (ConnectionRefusedError/FileNotFoundError)
            or it did not answer within ``timeout_s``.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n") and len(buf) <= MAX_REPLY:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise OSError("the daemon sent a malformed reply")
    return reply
