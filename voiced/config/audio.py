"""The ``audio:`` section's validator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from voiced.config.sections import _MISSING, _kind, _path, _Section
from voiced.config.settings import (
    AUDIO_BACKENDS,
    ECHO_SETTINGS,
    INPUT_FILE_STARTS,
    AudioEndpointSettings,
    AudioSettings,
    EchoPolicy,
    EchoSetting,
)


def _endpoint(sec: _Section, backend: str, base: Path, *, is_input: bool) -> AudioEndpointSettings:
    raw_dev = sec.raw("device")
    device: str | int = "default"
    if raw_dev is _MISSING or raw_dev is None:
        pass
    elif isinstance(raw_dev, bool) or not isinstance(raw_dev, str | int):
        sec.bad("device", f"expected a device name, index or 'default', got {_kind(raw_dev)}")
    elif isinstance(raw_dev, int) and raw_dev < 0:
        sec.bad("device", f"device index {raw_dev} is negative")
    else:
        device = raw_dev
    path = _path(sec, "file", base)
    rate_hz: int | None = None
    if sec.has("rate_hz") and sec.data.get("rate_hz") is not None:
        rate_hz = sec.int_("rate_hz", 48000, lo=8000, hi=192000)
    else:
        sec.raw("rate_hz")
    channel: int | None = None
    hardware_aec = False
    if is_input:
        if sec.has("channel") and sec.data.get("channel") is not None:
            channel = sec.int_("channel", 0, lo=0, hi=31)
        else:
            sec.raw("channel")
        hardware_aec = sec.bool_("hardware_aec", False)
    if backend == "file":
        if path is None:
            sec.bad("file", "is required when audio.backend is file")
        elif is_input and not path.is_file():
            sec.bad("file", f"{path} does not exist")
        elif not is_input and not path.parent.is_dir():
            sec.bad("file", f"directory {path.parent} does not exist")
    sec.finish()
    return AudioEndpointSettings(device=device, file=path, channel=channel, rate_hz=rate_hz,
                                 hardware_aec=hardware_aec)


def resolve_echo(setting: EchoSetting, backend: str, hardware_aec: bool,
                 ) -> tuple[EchoPolicy, str]:
    """The echo policy ``setting`` means here, and why (``auto`` looks at the machine)."""
    if setting != "auto":
        return setting, "as configured"
    if backend == "file":
        return "half_duplex", "the file backend has no acoustic path to cancel"
    if hardware_aec:
        return "full_duplex", "audio.input.hardware_aec: the mic cancels the echo itself"
    from voiced.audio import aec

    if not aec.available():
        return "half_duplex", ("libspeexdsp is not installed (apt install libspeexdsp1): "
                               "no echo cancellation, the mic is muted while it speaks")
    return "aec", "libspeexdsp loads and the mic has no echo cancellation of its own"


def _audio(sec: _Section, base: Path) -> AudioSettings:
    d = AudioSettings()
    backend = sec.choice("backend", d.backend, AUDIO_BACKENDS)
    s = AudioSettings(
        backend=backend,
        input=_endpoint(sec.section("input"), backend, base, is_input=True),
        output=_endpoint(sec.section("output"), backend, base, is_input=False),
        echo_setting=sec.choice("echo", d.echo_setting, ECHO_SETTINGS),
        echo_tail_ms=sec.int_("echo_tail_ms", d.echo_tail_ms, lo=0, hi=5000),
        frame_ms=sec.int_("frame_ms", d.frame_ms, lo=10, hi=100),
        block_ms=sec.int_("block_ms", d.block_ms, lo=10, hi=200),
        input_file_starts=sec.choice("input_file_starts", d.input_file_starts,
                                     INPUT_FILE_STARTS),
        jitter_ms=sec.int_("jitter_ms", d.jitter_ms, lo=0, hi=1000),
        period_ms=sec.int_("period_ms", d.period_ms, lo=5, hi=100),
        speaker_idle_s=sec.num("speaker_idle_s", d.speaker_idle_s, lo=0.1, hi=3600),
        reopen_s=sec.num("reopen_s", d.reopen_s, lo=0.05, hi=300),
        reopen_max_s=sec.num("reopen_max_s", d.reopen_max_s, lo=0.05, hi=3600),
        max_queued_s=sec.num("max_queued_s", d.max_queued_s, lo=1, hi=3600),
    )
    echo, why = resolve_echo(s.echo_setting, s.backend, s.input.hardware_aec)
    s = dataclasses.replace(s, echo=echo, echo_reason=why)
    if s.reopen_max_s < s.reopen_s:
        sec.bad("reopen_max_s", f"{s.reopen_max_s:g} is less than reopen_s ({s.reopen_s:g})")
    if s.frame_ms % 10:
        sec.bad("frame_ms", f"{s.frame_ms} is not a multiple of 10")
    elif s.block_ms % s.frame_ms:
        sec.bad("block_ms", f"{s.block_ms} is not a multiple of frame_ms ({s.frame_ms})")
    sec.finish()
    return s
