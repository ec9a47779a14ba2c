"""The local control socket behind `voiced ctl`.

One JSON request per connection, one JSON reply: ``{"cmd": "status"}`` →
``{"ok": true, "status": {...}}``. The socket is a unix stream socket of mode 0660, so only
root and the service's group can drive the device.
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

from voiced.config import CONTROL_SOCKET_ENV
from voiced.errors import ConfigError

logger = logging.getLogger(__name__)

COMMANDS: Final = ("status", "press", "long-press", "interrupt")
_MAX_REQUEST: Final = 4096

Handler = Callable[[str], dict[str, Any]]


class ControlServer:
    """Serves `voiced ctl` requests by calling ``handler(cmd)`` on the event loop."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket (replacing a stale one left by a crash).

        Raises:
            ConfigError: naming ``control.socket`` when it cannot be made (the contract:
                a set-up error is one line and exit 78, not a traceback).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
            os.chmod(self.path, 0o660)
        except OSError as e:
            # typically a developer who is not root: /run/voiced is the service's
            raise ConfigError([("control.socket", (
                f"cannot create {self.path}: {e.strerror or e}; run as the service's user "
                f"(systemctl start voiced), or point control.socket (or ${CONTROL_SOCKET_ENV})"
                " at a directory you may write, e.g. $XDG_RUNTIME_DIR/voiced.sock"))]) from e
        logger.debug("control socket at %s", self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                req = json.loads(line[:_MAX_REQUEST])
                cmd = req["cmd"] if isinstance(req, dict) else None
            except (ValueError, KeyError):
                cmd = None
            if cmd not in COMMANDS:
                reply: dict[str, Any] = {"ok": False,
                                         "error": f"unknown command; use one of {COMMANDS}"}
            else:
                reply = self.handler(str(cmd))
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError) as e:
            logger.debug("control client went away: %s", e)
        finally:
            writer.close()

    async def aclose(self) -> None:
        """Stop serving and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def request(path: Path, cmd: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one command to a running daemon and return its reply (blocking).

    Raises:
        OSError: no daemon listens at ``path`` (ConnectionRefusedError/FileNotFoundError)
            or it did not answer within ``timeout_s``.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise OSError("the daemon sent a malformed reply")
    return reply
