"""Built-in tools: the time, the speaker volume, the microphone, the device's status."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import ipaddress
import socket
import threading
import time
import zoneinfo
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from voiced.tools import Tool, ToolError

_EMPTY: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
# The unit's ProcSubset=pid hides both /proc files: the clock and /sys stand in for them
_PROC_UPTIME = Path("/proc/uptime")
_PROC_WIRELESS = Path("/proc/net/wireless")
_SYS_NET = Path("/sys/class/net")
DNS_TIMEOUT_S: Final = 2.0
"""device_status waits this long for the name of the server; a dead resolver takes 10 s
or more, and three of them would reach the watchdog if it ran on the event loop."""
# one lookup per name at a time, on a daemon thread of its own: a dead resolver holds
# one thread however often the model asks, and never holds up the daemon's exit (an
# executor's threads are joined at exit)
_lookups: dict[str, concurrent.futures.Future[Any]] = {}


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
                  timeout_s: float, volume_floor: int = 0) -> list[Tool]:
    """The enabled built-in tools, bound to ``device``.

    The model may not set the volume below ``volume_floor`` percent: a misheard
    "quieter" must not leave a device nobody hears, with no voice to ask it back
    (`voiced ctl volume` may go lower).
    """
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
            if action == "get":
                return {"volume_percent": device.volume_percent()}
            if action == "set":
                if "percent" not in args:
                    raise ToolError("say which volume to set, in percent")
                wanted = step
            else:
                wanted = device.volume_percent() + (step if action == "up" else -step)
            if wanted < volume_floor:
                return {"volume_percent": device.set_volume(volume_floor),
                        "note": f"{volume_floor} % is the lowest the model may set"}
            return {"volume_percent": device.set_volume(wanted)}
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


async def network_status(server_url: str, *,
                         timeout_s: float = DNS_TIMEOUT_S) -> dict[str, Any]:
    """The interface and address that reach the server, and Wi-Fi link quality if any.

    A UDP socket "connected" to the server picks the route without sending a packet. The
    server's name is resolved off the event loop, for at most ``timeout_s``.
    """
    out: dict[str, Any] = {"hostname": socket.gethostname()}
    host = urlsplit(server_url).hostname or "127.0.0.1"
    try:
        family, address = await _resolve(host, timeout_s)
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((address, 443))
            out["address"] = s.getsockname()[0]
    except TimeoutError:
        out["address"] = None
        out["network_error"] = f"the name server did not answer within {timeout_s:g} s"
    except OSError as e:
        out["address"] = None
        out["network_error"] = e.strerror or str(e)
    out.update(_wifi())
    return out


async def _resolve(host: str, timeout_s: float) -> tuple[int, str]:
    """``host``'s address family and first address, looked up on the DNS thread."""
    try:
        ip = ipaddress.ip_address(host)
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)
    except ValueError:
        pass
    lookup = _lookups.get(host)
    if lookup is None or lookup.done():
        lookup = _lookups[host] = concurrent.futures.Future()
        threading.Thread(target=_look_up, args=(host, lookup), name="voiced-dns",
                         daemon=True).start()
    infos = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(lookup)), timeout_s)
    if not infos:
        raise OSError(f"{host} has no address")
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


def _look_up(host: str, result: concurrent.futures.Future[Any]) -> None:
    try:
        result.set_result(socket.getaddrinfo(host, 443, type=socket.SOCK_DGRAM))
    except BaseException as e:  # noqa: BLE001 - handed to the waiting coroutine
        result.set_exception(e)


def _wifi() -> dict[str, Any]:
    """``{"wifi": ...}`` from /proc/net/wireless, else /sys; empty without Wi-Fi."""
    try:  # /proc/net/wireless: "wlan0: 0000   54.  -56.  -256 ..."
        found: dict[str, Any] = {}
        for line in _PROC_WIRELESS.read_text().splitlines()[2:]:
            name, rest = line.split(":", 1)
            found["wifi"] = {"interface": name.strip(),
                             "link_quality": float(rest.split()[1].rstrip("."))}
        return found
    except OSError:  # hidden under the unit (ProcSubset=pid): ask /sys
        wifi = _sys_wifi()
        return {"wifi": wifi} if wifi is not None else {}
    except (ValueError, IndexError):
        return {}


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
