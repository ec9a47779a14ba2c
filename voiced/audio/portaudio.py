"""PortAudio's devices through PyAudio: listing, rates, choosing, and open errors.

An open that fails is explained (who holds the device). The mic and the speaker are
``pyaudio_source.py`` and ``pyaudio_sink.py``; ``pyaudio_backend.py`` is the face.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from voiced.errors import AudioDeviceError, ConfigError

logger = logging.getLogger("voiced.audio.pyaudio_backend")

PROBE_RATES: Final = (24000, 48000, 44100, 16000, 32000, 22050, 8000)
LISTED_RATES: Final = (8000, 16000, 22050, 24000, 44100, 48000)
_QUEUE_FRAMES: Final = 50  # mic frames kept for the loop (1 s at 20 ms); oldest dropped
_WARN_EVERY_S: Final = 60.0
_MIC_SILENCE_S: Final = 2.0  # no callback for this long: the mic is gone


def _pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as e:  # pragma: no cover - a dependency
        raise AudioDeviceError(f"PyAudio is not installed: {e}") from e
    return pyaudio


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One PortAudio device."""

    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate: int
    host_api: str


def open_portaudio() -> Any:
    """A PyAudio instance (PortAudio initialised); the caller terminates it."""
    return _pyaudio().PyAudio()


def list_devices(pa: Any) -> list[DeviceInfo]:
    """Every device PortAudio sees."""
    out = []
    for i in range(pa.get_device_count()):
        d = pa.get_device_info_by_index(i)
        api = pa.get_host_api_info_by_index(d["hostApi"])["name"]
        out.append(DeviceInfo(i, str(d["name"]), int(d["maxInputChannels"]),
                              int(d["maxOutputChannels"]), int(d["defaultSampleRate"]),
                              str(api)))
    return out


def supported_rates(pa: Any, dev: DeviceInfo, *, is_input: bool, channels: int = 1,
                    rates: tuple[int, ...] = LISTED_RATES) -> list[int]:
    """The rates from ``rates`` the device accepts for paInt16 with ``channels``."""
    fmt = _pyaudio().paInt16
    ok = []
    for rate in rates:
        try:
            if is_input:
                pa.is_format_supported(rate, input_device=dev.index, input_channels=channels,
                                       input_format=fmt)
            else:
                pa.is_format_supported(rate, output_device=dev.index,
                                       output_channels=channels, output_format=fmt)
            ok.append(rate)
        except ValueError:
            pass
    return ok


def select_device(pa: Any, spec: str | int, *, is_input: bool, key: str) -> DeviceInfo:
    """Find the device named by ``spec``: an index, a name substring, or "default".

    Raises:
        ConfigError: no device, or several, match; the message lists the devices.
    """
    devices = [d for d in list_devices(pa)
               if (d.max_input_channels if is_input else d.max_output_channels) > 0]
    listing = ", ".join(f'{d.index} "{d.name}"' for d in devices) or "no devices at all"
    kind = "input" if is_input else "output"
    if spec == "default":
        try:
            info = (pa.get_default_input_device_info() if is_input
                    else pa.get_default_output_device_info())
        except OSError:
            if devices:
                return devices[0]
            raise ConfigError([(key, f"there is no {kind} device; found: {listing}")]) from None
        return next((d for d in devices if d.index == info["index"]), devices[0])
    if isinstance(spec, int):
        for d in devices:
            if d.index == spec:
                return d
        raise ConfigError([(key, f"no {kind} device has index {spec}; found: {listing}")])
    matches = [d for d in devices if spec.lower() in d.name.lower()]
    exact = [d for d in matches if d.name.lower() == spec.lower()]
    if len(exact) == 1:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError([(key, f'no {kind} device matches "{spec}"; found: {listing}')])
    names = ", ".join(f'{d.index} "{d.name}"' for d in matches)
    raise ConfigError([(key, f'"{spec}" matches several {kind} devices: {names}; '
                             "use a longer name or the index")])


_HW_IN_NAME = re.compile(r"\(hw:(\d+),(\d+)\)")  # ALSA names: "USB Audio: - (hw:1,0)"


def pcm_holders(dev_name: str, capture: bool, *, snd_dir: Path = Path("/dev/snd"),
                proc: Path = Path("/proc")) -> list[str]:
    """Who holds an ALSA PCM open, as ``name (pid N)``.

    The PCM node of ``dev_name``'s card and device (``pcmC1D0c``) when the name says which,
    else any PCM node of that direction. Lists only processes whose ``/proc`` entries this
    one may read: under the unit's ``ProtectProc=invisible``, other users' processes are
    hidden, and then it finds none.
    """
    m = _HW_IN_NAME.search(dev_name)
    card, device = (m.group(1), m.group(2)) if m else (r"\d+", r"\d+")
    node = re.compile(rf"pcmC{card}D{device}{'c' if capture else 'p'}")
    prefix = f"{snd_dir}/"
    holders = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            targets = [os.readlink(fd) for fd in (pid_dir / "fd").iterdir()]
            if any(t.startswith(prefix) and node.fullmatch(t[len(prefix):])
                   for t in targets):
                name = (pid_dir / "comm").read_text().strip()
                holders.append(f"{name} (pid {pid_dir.name})")
        except OSError:  # not ours to read, or the process ended meanwhile
            continue
    return holders


def _explain_open_error(e: OSError, dev: DeviceInfo, kind: str, *,
                        snd_dir: Path = Path("/dev/snd")) -> str:
    text = str(e)
    if "-9985" in text or "busy" in text.lower() or "Device unavailable" in text:
        holders = pcm_holders(dev.name, kind == "input", snd_dir=snd_dir)
        who = (f"held by {', '.join(holders)}; stop that program or point it at another "
               "device" if holders else
               "another program holds it (check `fuser -v /dev/snd/*`; a desktop "
               "session's PulseAudio or PipeWire often does)")
        return f"{kind} device {dev.index} \"{dev.name}\" is busy: {who}; {text}"
    if "-9997" in text:
        return f"{kind} device \"{dev.name}\" refused the sample rate: {text}"
    return f"cannot open {kind} device {dev.index} \"{dev.name}\": {text}"


def switch_stream(stream: Any, start: bool, what: str, dev: DeviceInfo | None) -> str | None:
    """Start or stop ``stream`` (blocks: call it on a worker thread).

    Returns None, or the fault in words (``microphone "USB" cannot start: ...``).
    """
    try:
        if start:
            stream.start_stream()
        else:
            stream.stop_stream()
    except OSError as e:
        return f"{what} \"{dev.name if dev else '?'}\" cannot {'start' if start else 'stop'}: {e}"
    return None


def _release(stream: Any, pa: Any, what: str) -> None:
    """Stop and close a stream, then terminate its PortAudio instance (either may be None).

    Errors are expected here (the device may be gone) and only logged at DEBUG.
    """
    if stream is not None:
        try:
            stream.stop_stream()
            stream.close()
        except OSError as e:
            logger.debug("closing the %s: %s", what, e)
    if pa is not None:
        pa.terminate()


