"""Building the daemon's parts from the settings: audio, core, tools, outbox, button, orb.

Errors name the key at fault and say what to do (a gpiozero or SPI failure becomes a
``ConfigError`` for ``button.pin`` or the ``leds`` key).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from voiced import wire
from voiced.audio import AudioSink, AudioSource
from voiced.button import ButtonInput, Gesture
from voiced.config import Settings
from voiced.core.conversation import Conversation
from voiced.core.policy import Policy, make_policy
from voiced.core.speech_gate import ClientVad
from voiced.errors import ConfigError
from voiced.live.core import LiveConversation, LiveSettings
from voiced.orb import OrbDriver
from voiced.outbox import Outbox
from voiced.sinks import build_sink
from voiced.tools import Tool, Toolbox
from voiced.tools.builtin import Device, builtin_tools

if TYPE_CHECKING:
    from voiced.audio.vad import SpeechDetector



def build_audio(settings: Settings) -> tuple[AudioSource, AudioSink]:
    """The mic and speaker the configuration asks for."""
    a = settings.audio
    if a.backend == "file":
        from voiced.audio.filebackend import WavFileSink, WavFileSource

        assert a.input.file is not None and a.output.file is not None  # validated
        return (WavFileSource(a.input.file, frame_ms=a.frame_ms,
                              starts_on_mic=a.input_file_starts == "on_mic",
                              channel=a.input.channel),
                WavFileSink(a.output.file, frame_ms=a.frame_ms, max_queued_s=a.max_queued_s))
    from voiced.audio.pyaudio_backend import PyAudioSink, PyAudioSource

    # aec: one frame a callback, so each frame is cleaned against the speaker's position
    # at the moment it was read
    block_ms = a.frame_ms if a.echo == "aec" else a.block_ms
    # aec: the speaker idles (issue 21) only while the mic is off (HandsFree holds it
    # awake otherwise): the canceller's reference must run through the silence between
    # replies, and a restart is an echo path change, re-checked at the next reply
    return (PyAudioSource(a.input, frame_ms=a.frame_ms, block_ms=block_ms),
            PyAudioSink(a.output, period_ms=a.period_ms, jitter_ms=a.jitter_ms,
                        max_queued_s=a.max_queued_s, idle_s=a.speaker_idle_s))


def build_policy(settings: Settings,
                 tools: tuple[wire.FunctionToolParam, ...] = ()) -> Policy:
    """The session core's policy, from the settings (and the tools the model may call)."""
    rt = settings.realtime
    td = rt.turn_detection
    transcription: wire.TranscriptionParam = {"model": rt.transcription.model}
    if rt.transcription.language:
        transcription["language"] = rt.transcription.language
    if rt.transcription.prompt:
        transcription["prompt"] = rt.transcription.prompt
    return make_policy(
        model=rt.model, voice=rt.voice, instructions=rt.instructions, turn_type=td.type,
        threshold=td.threshold, prefix_padding_ms=td.prefix_padding_ms,
        silence_duration_ms=td.silence_duration_ms, eagerness=td.eagerness,
        transcription=transcription, half_duplex=settings.audio.echo == "half_duplex",
        echo_tail_ms=settings.audio.echo_tail_ms,
        push_to_talk=settings.button is not None and settings.button.mode == "push_to_talk",
        send_model=rt.relay is None, behind_relay=rt.relay is not None,
        session_owner=rt.relay.session_owner if rt.relay else "device",
        reseed_turns=rt.reseed_turns,
        rollover_margin_s=rt.rollover_margin_s, tools=tools,
        client_vad=ClientVad(pre_roll_ms=td.prefix_padding_ms, tail_ms=td.tail_ms,
                             silence_ms=td.silence_duration_ms,
                             min_speech_ms=td.min_speech_ms),
        max_transcript_bytes=rt.max_transcript_bytes, max_pending_items=rt.max_pending_items)


def build_conversation(settings: Settings,
                       tools: tuple[wire.FunctionToolParam, ...] = ()) -> Conversation:
    """The session core, configured from the settings."""
    rt = settings.realtime
    policy = build_policy(settings, tools)
    # behind a relay with no id configured the relay names the conversation (R1)
    cid = rt.relay.conversation_id if rt.relay else str(uuid.uuid4())
    return Conversation(policy, conversation_id=cid, new_id=lambda: str(uuid.uuid4()))


def build_live_settings(settings: Settings,
                        tools: tuple[wire.FunctionToolParam, ...] = ()) -> LiveSettings:
    """The GPT-Live core's settings (``realtime.api: live``)."""
    rt, lv = settings.realtime, settings.realtime.live
    return LiveSettings(
        model=lv.model, voice=lv.voice, instructions=rt.instructions,
        quiet_close_s=lv.quiet_close_s, ack_delay_ms=lv.ack_delay_ms, tools=tools,
        delegation_wait_ms=lv.delegation_wait_ms, reseed_turns=rt.reseed_turns,
        prestart_ms=lv.prestart_ms, half_duplex=settings.audio.echo == "half_duplex",
        echo_tail_ms=settings.audio.echo_tail_ms, interrupt_hold_ms=lv.interrupt_hold_ms,
        close_wait_s=lv.close_wait_s, reconnect_min_s=rt.reconnect_min_s,
        reconnect_max_s=rt.reconnect_max_s, max_transcript_bytes=rt.max_transcript_bytes)


def build_live_conversation(settings: Settings, tools: tuple[wire.FunctionToolParam, ...] = (),
                            ) -> LiveConversation:
    """The GPT-Live core, configured from the settings."""
    return LiveConversation(build_live_settings(settings, tools),
                            conversation_id=str(uuid.uuid4()),
                            new_id=lambda: str(uuid.uuid4()))


def build_vad(settings: Settings, policy: Policy) -> SpeechDetector | None:
    """The on-device VAD, when the core's policy asks for client_vad."""
    if policy.client_vad is None:
        return None
    from voiced.audio.vad import SpeechDetector  # webrtcvad: only for client_vad

    return SpeechDetector(settings.realtime.turn_detection.vad_aggressiveness)


def build_toolbox(settings: Settings, device: Device) -> Toolbox:
    """The built-in tools the config enables, acting on ``device``, and the HTTP tools."""
    tl = settings.tools
    tools: list[Tool] = builtin_tools(tl.builtin, device, timezone=tl.timezone,
                                      timeout_s=tl.timeout_s,
                                      volume_floor=tl.volume_floor_percent)
    if tl.http:
        from voiced.tools.http import http_tool  # aiohttp: 25 MB, only when needed

        tools += [http_tool(spec) for spec in tl.http]
    return Toolbox(tools)


def build_outbox(settings: Settings) -> Outbox | None:
    """The transcript outbox and its sink, or None for ``transcripts.sink: none``."""
    tr = settings.transcripts
    if tr.sink == "none":
        return None
    relay = settings.realtime.relay
    backend = build_sink(tr, device_id=settings.device_id,
                         agent_id=relay.agent_id if relay else None)
    return Outbox(tr.outbox_dir, backend, max_records=tr.max_records, max_bytes=tr.max_bytes,
                  max_drafts=tr.max_drafts, retry_max_s=tr.retry_max_s)


_DRY_RUN = ("set GPIOZERO_PIN_FACTORY=mock for a dry run without GPIO, or remove the "
            "`{section}:` section")


def _explain(e: BaseException, key: str, section: str) -> ConfigError:
    from gpiozero.exc import BadPinFactory, GPIOPinInUse, PinInvalidPin, PinPWMUnsupported

    if isinstance(e, PinPWMUnsupported):
        msg = ("this pin library has no PWM: use leds.kind: led, or for a dry run "
               "GPIOZERO_PIN_FACTORY=mock GPIOZERO_MOCK_PIN_CLASS=mockpwmpin")
    elif isinstance(e, BadPinFactory):
        msg = _no_pin_library() + "; " + _DRY_RUN.format(section=section)
    elif isinstance(e, GPIOPinInUse):
        msg = f"the pin is already in use ({e}); pick another pin or stop what holds it"
    elif isinstance(e, PinInvalidPin | ValueError):
        msg = f"not a usable pin here: {e}"
    elif isinstance(e, FileNotFoundError | PermissionError):
        msg = (f"{e.strerror or e}: {getattr(e, 'filename', '')}; enable SPI "
               "(raspi-config → Interface Options → SPI) and add the user to the spi group")
    elif isinstance(e, ImportError):
        msg = f"{e}; install it (e.g. `pip install spidev`) or set leds.driver: none"
    else:
        msg = f"{type(e).__name__}: {e}"
    return ConfigError([(key, msg)])


def _no_pin_library() -> str:
    """Why no pin library loaded: lgpio missing, or present but unable to start."""
    if importlib.util.find_spec("lgpio") is None:
        return ("no GPIO pin library works on this machine (on a Pi: install lgpio, e.g. "
                "`pip install lgpio` in the venv)")
    # lgpio is there, so installing it is the wrong advice: at import it makes its
    # .lgd-nfy* pipes in $LG_WD, else in the working directory, and fails where that is
    # read-only (the unit's "/" under ProtectSystem=strict)
    try:
        wd = os.environ.get("LG_WD") or os.getcwd()
    except OSError:
        wd = "(the working directory is gone)"
    state = "writable" if os.access(wd, os.W_OK) else "NOT writable"
    return (f"lgpio is installed but did not start: it needs a writable directory for its "
            f"notification pipes, $LG_WD or else the working directory (now {wd}: {state}; "
            "the unit sets LG_WD=/run/voiced), and access to /dev/gpiochip*")


def _quiet_fallback_warnings() -> None:
    # gpiozero warns once per pin library it cannot load; our error says what to do
    import warnings

    from gpiozero.exc import PinFactoryFallback

    warnings.filterwarnings("ignore", category=PinFactoryFallback)


def build_button(settings: Settings, on_gesture: Callable[[Gesture], None],
                 loop: Any, pin_factory: Any = None) -> ButtonInput | None:
    """The button, started, or None when the config has none.

    Raises:
        ConfigError: naming ``button.pin`` and what to do.
    """
    if settings.button is None:
        return None
    _quiet_fallback_warnings()
    button = ButtonInput(settings.button, on_gesture, pin_factory)
    try:
        button.start(loop)
    except Exception as e:  # noqa: BLE001 - every gpiozero failure is explained
        button.close()
        raise _explain(e, "button.pin", "button") from e
    return button


def build_orb(settings: Settings, pin_factory: Any = None,
              spi: Any = None) -> OrbDriver | None:
    """The orb driver, or None for ``leds.driver: none``.

    Raises:
        ConfigError: naming the leds key at fault and what to do.
    """
    leds = settings.leds
    if leds.driver == "none":
        return None
    _quiet_fallback_warnings()
    if leds.driver == "gpio":
        from voiced.orb.gpio import GpioOrb

        try:
            return GpioOrb(leds, pin_factory)
        except Exception as e:  # noqa: BLE001
            raise _explain(e, "leds.pins", "leds") from e
    from voiced.orb.apa102 import Apa102Orb

    try:
        return Apa102Orb(leds, spi, pin_factory)
    except (FileNotFoundError, PermissionError, ImportError) as e:
        raise _explain(e, f"leds.spi_bus/spi_device (/dev/spidev{leds.spi_bus}."
                          f"{leds.spi_device})", "leds") from e
    except Exception as e:  # noqa: BLE001
        raise _explain(e, "leds.power_pin", "leds") from e
