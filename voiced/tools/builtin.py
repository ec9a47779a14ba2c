"""Built-in tools: the time, the speaker volume, the microphone, the device's status."""

from __future__ import annotations

import datetime as dt
import socket
import time
import zoneinfo
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from voiced.tools import Tool, ToolError

_EMPTY: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
# The unit's ProcSubset=pid hides both /proc files: the clock and /sys stand in for them
_PROC_UPTIME = Path("/proc/uptime")
_PROC_WIRELESS = Path("/proc/net/wireless")
_SYS_NET = Path("/sys/class/net")


class Device(Protocol):
    """What the built-in tools may do to the device (the supervisor provides it)."""

    def mute_mic(self) -> None:
        """Switch the microphone off."""

    def end_conversation(self) -> None:
        """Start a new conversation once the current reply has been heard."""

    def volume_percent(self) -> int:
        """The speaker volume in percent."""

    def set_volume(self, percent: int) -> int:
        """Set (and persist) the speaker volume; return the new value."""

    async def device_status(self) -> dict[str, Any]:
        """Network, uptime, transcript backlog."""


def builtin_tools(enabled: tuple[str, ...], device: Device, *, timezone: str | None,
                  timeout_s: float) -> list[Tool]:
    """The enabled built-in tools, bound to ``device``."""
    tz = zoneinfo.ZoneInfo(timezone) if timezone else None
    tools: list[Tool] = []

    if "time" in enabled:
        async def get_time(args: dict[str, Any]) -> dict[str, Any]:
            now = dt.datetime.now(tz).astimezone(tz)
            return {"date": now.strftime("%A, %d %B %Y"), "time": now.strftime("%H:%M"),
                    "timezone": timezone or now.tzname(), "iso": now.isoformat("T", "seconds")}
        tools.append(Tool("get_time", "The current date and time where the device is.",
                          _EMPTY, get_time, timeout_s))

    if "volume" in enabled:
        async def set_volume(args: dict[str, Any]) -> dict[str, Any]:
            action = args["action"]
            step = int(args.get("percent", 10))
            if action == "set":
                if "percent" not in args:
                    raise ToolError("say which volume to set, in percent")
                new = device.set_volume(step)
            elif action == "get":
                new = device.volume_percent()
            else:
                step = step if action == "up" else -step
                new = device.set_volume(device.volume_percent() + step)
            return {"volume_percent": new}
        tools.append(Tool(
            "set_volume",
            "Get or change the speaker volume: up or down by a step (default 10 percent), "
            "or set it to a percentage.",
            {"type": "object", "additionalProperties": False, "required": ["action"],
             "properties": {"action": {"type": "string", "enum": ["up", "down", "set", "get"]},
                            "percent": {"type": "integer", "minimum": 0, "maximum": 100}}},
            set_volume, timeout_s))

    if "microphone" in enabled:
        async def mute(args: dict[str, Any]) -> dict[str, Any]:
            device.mute_mic()
            return {"microphone": "off", "note": "a press of the button switches it on again"}

        async def end(args: dict[str, Any]) -> dict[str, Any]:
            device.end_conversation()
            return {"ok": True, "note": "the conversation ends after your reply; say goodbye"}
        tools.append(Tool("mute_microphone", "Switch the device's microphone off.",
                          _EMPTY, mute, timeout_s))
        tools.append(Tool("end_conversation",
                          "End this conversation when the user says goodbye or asks to stop; "
                          "the next one starts with no memory of it.", _EMPTY, end, timeout_s))

    if "status" in enabled:
        async def status(args: dict[str, Any]) -> dict[str, Any]:
            return await device.device_status()
        tools.append(Tool("device_status",
                          "The device's own status: network, uptime, transcripts waiting "
                          "to be delivered.", _EMPTY, status, timeout_s))
    return tools


def system_uptime_s() -> int | None:
    """Seconds since the system booted, suspend included (None where nothing says)."""
    try:  # the clock /proc/uptime reads, with no file the unit could hide
        return round(time.clock_gettime(time.CLOCK_BOOTTIME))
    except (AttributeError, OSError):  # not Linux
        pass
    try:
        return round(float(_PROC_UPTIME.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return None


def network_status(server_url: str) -> dict[str, Any]:
    """The interface and address that reach the server, and Wi-Fi link quality if any.

    A UDP socket "connected" to the server picks the route without sending a packet.
    The server's name may have to be resolved (it blocks): call this off the event loop.
    """
    out: dict[str, Any] = {"hostname": socket.gethostname()}
    host = urlsplit(server_url).hostname or "127.0.0.1"
    try:
        # the address family follows the server's address: an IPv6-only server has a route
        family, kind, proto, _, addr = socket.getaddrinfo(host, 443, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.connect(addr)
            out["address"] = s.getsockname()[0]
    except OSError as e:  # socket.gaierror too: the name does not resolve
        out["address"] = None
        out["network_error"] = e.strerror or str(e)
    try:  # /proc/net/wireless: "wlan0: 0000   54.  -56.  -256 ..."
        for line in _PROC_WIRELESS.read_text().splitlines()[2:]:
            name, rest = line.split(":", 1)
            out["wifi"] = {"interface": name.strip(),
                           "link_quality": float(rest.split()[1].rstrip("."))}
    except OSError:  # hidden under the unit (ProcSubset=pid): ask /sys
        wifi = _sys_wifi()
        if wifi is not None:
            out["wifi"] = wifi
    except (ValueError, IndexError):
        pass
    return out


def _sys_wifi() -> dict[str, Any] | None:
    """The Wi-Fi interface from /sys/class/net/*/wireless, one that is up first.

    Its wireless/link (the same figure as /proc/net/wireless) exists only on kernels with
    the wireless-extensions compatibility; without it the link quality is left out.
    """
    found: list[dict[str, Any]] = []
    try:
        dirs = sorted(_SYS_NET.glob("*/wireless"))
    except OSError:
        return None
    for wireless in dirs:
        iface = wireless.parent
        wifi: dict[str, Any] = {"interface": iface.name}
        try:
            wifi["operstate"] = (iface / "operstate").read_text().strip()
        except OSError:
            pass
        try:
            wifi["link_quality"] = float((wireless / "link").read_text().strip())
        except (OSError, ValueError):
            pass
        found.append(wifi)
    found.sort(key=lambda w: w.get("operstate") != "up")  # stable: by name otherwise
    return found[0] if found else None
