"""sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING (a no-op outside systemd)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import sdnotify

from voiced import guard

logger = logging.getLogger(__name__)

STATUS_LIMIT: Final = 200
"""Characters of STATUS= text (systemctl status shows one line)."""


class Notifier:
    """Talks to systemd when ``NOTIFY_SOCKET`` is set; otherwise does nothing.

    Args:
        environ: where NOTIFY_SOCKET and WATCHDOG_USEC are read (default os.environ).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = (
            int(usec) / 1e6 if self.enabled and usec.isdigit() and int(usec) > 0
            and (not pid or pid == str(os.getpid())) else None)
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
        self.sent: list[str] = []

    def _send(self, msg: str) -> None:
        if self._sd is None:
            return
        # sdnotify encodes as Latin-1 and silently drops what does not fit (an ellipsis,
        # a German or Japanese close reason); systemd reads UTF-8: hand it those bytes
        self._sd.notify(msg.encode("utf-8", "replace").decode("latin-1"))
        self.sent.append(msg)
        if len(self.sent) > 100:
            del self.sent[:50]

    def ready(self) -> None:
        """Local devices are open (not: the network is up)."""
        self._send("READY=1")

    def status(self, text: str) -> None:
        """Words for `systemctl status`: one line, controls escaped, capped.

        The text often carries server words (a close reason, an error): a newline in it
        would start an assignment of its own in the datagram (``WATCHDOG=trigger``).
        """
        self._send(f"STATUS={guard.printable(text, STATUS_LIMIT)}")

    def reloading(self) -> None:
        """SIGHUP received; re-reading the configuration."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """SIGTERM received; shutting down."""
        self._send("STOPPING=1")

    async def watchdog(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
                       ) -> None:
        """Ping the watchdog from the event loop at half its interval, forever.

        NOTE: the pings come from the loop on purpose: a blocked loop stops them, and
        systemd restarts the service. ``sleep`` is how the interval is waited out (a
        test records it instead).
        """
        if self.watchdog_s is None:
            return
        logger.debug("watchdog every %.1f s", self.watchdog_s / 2)
        while True:
            self._send("WATCHDOG=1")
            await sleep(self.watchdog_s / 2)
