"""Hands-free (issue 22): echo cancellation, the wake word and earcons, wired together.

The supervisor owns one ``HandsFree`` and tells it a few things: after it builds the
devices (``install``), after the audio keeper reopened them (``devices_reopened``), each
mic frame (``mic_frame``), each state it shows (``on_state``); its ``status`` goes into
the supervisor's. Every decision lives here:

- ``audio.echo: aec``: an ``EchoCanceller`` between the devices (audio/pipeline.py);
  while it bypasses itself (it cannot keep up) the core is switched to half duplex, and
  back when it resumes; the log and ``status.echo`` say which is in force.
- ``wake_word``: the detector hears the mic frames (after the canceller) while the mic
  is off, or while the assistant speaks when the canceller is working; it is paused
  while the assistant speaks otherwise (it would hear the reply), and while an earcon
  plays. A detection acts as a short press (which interrupts a reply and opens the mic)
  unless the mic is already listening; the detector's refractory period keeps one
  utterance one event.
- ``earcons``: the mic switching on and off, the connection back after an outage, the
  error state and a new conversation, each as its own sound, mixed into the speaker's
  output (so it is part of the canceller's reference) at the configured gain times the
  speaker volume. Without the canceller, in half duplex, mic frames are replaced by
  silence while an earcon plays and for ``audio.echo_tail_ms`` after it, so the sound
  never reaches the server through the room either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from voiced import guard
from voiced.audio import earcons
from voiced.audio.aec import EchoCanceller
from voiced.audio.pipeline import EchoFilter, SpeakerMix, build_echo
from voiced.audio.wakeword import Detection, WakeWordDetector
from voiced.config import Settings
from voiced.errors import ConfigError
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

logger = logging.getLogger(__name__)

ECHO_DELAY_FILE: Final = "echo_delay"
"""Beside the volume file: the echo canceller's bulk delay (ms) last found on this device."""


def build_detector(settings: Settings) -> WakeWordDetector | None:
    """The wake-word detector the settings ask for (None: the section is off).

    Raises:
        ConfigError: enabled, but pymicro-wakeword is not installed.
    """
    ww = settings.wake_word
    if not ww.enabled:
        return None
    from voiced.audio.native import MissingLibraryError
    from voiced.audio.wakeword import MicroWakeWordDetector

    try:
        return MicroWakeWordDetector(ww.models, rate=SAMPLE_RATE, threshold=ww.threshold,
                                     refractory_s=ww.refractory_s)
    except MissingLibraryError as e:
        raise ConfigError([("wake_word.enabled", str(e))]) from e


class HandsFree:
    """Echo cancellation, wake word and earcons for one supervisor.

    Args:
        settings: the daemon's settings.
        half_duplex: switches the conversation core's half duplex on or off (on while
            the canceller is bypassed).
        press: what a detection does (the supervisor's short press).
        apply: applies the core's pending effects (after a policy switch).
        volume: the speaker volume in percent, for the earcons' loudness.
        detector: the wake-word detector (None: built from the settings).
        echo_delay_file: where the echo canceller's bulk delay is kept across restarts
            (None: not kept), so the first reply after a start needs no estimate and no
            reset of the filter: its echo is cancelled about 1.5 s sooner.
    """

    def __init__(self, settings: Settings, half_duplex: Callable[[bool], None], *,
                 press: Callable[[], None], apply: Callable[[], None],
                 volume: Callable[[], int], detector: WakeWordDetector | None = None,
                 echo_delay_file: Path | None = None) -> None:
        self.settings = settings
        self._half_duplex = half_duplex
        self._press = press
        self._apply = apply
        self._volume = volume
        self.detector = detector if detector is not None else build_detector(settings)
        self.echo: EchoCanceller | None = None
        self._source: Any = None  # the mic, for its overflow count in the status
        self._sink: Any = None  # the speaker, held awake while the canceller's mic is on
        self._filter: EchoFilter | None = None
        self.mix: SpeakerMix | None = None
        self.echo_mode: str = settings.audio.echo
        self._bypassed = False  # the canceller is out of the way (on the loop's view)
        self._loop: asyncio.AbstractEventLoop | None = None
        # what the supervisor last showed
        self._state = "starting"
        self._mic_on = False
        self._connected = False
        self._was_connected = False
        self._conversation: str | None = None
        self._quiet_reconnect = False
        self._gate_samples = 0  # half duplex: mic samples still replaced by silence
        self.detections: list[Detection] = []
        self.wake_presses = 0
        self.earcons_played: dict[str, int] = {}
        self._delay_file = echo_delay_file
        self._kept_bulk_ms: int | None = None  # what the file holds (read or written)
        self._bulk_source = "none"  # "kept" once preset from the file (status)

    # ------------------------------------------------------------------ devices

    def install(self, source: Any, sink: Any, loop: asyncio.AbstractEventLoop) -> None:
        """Put the earcon mixer (and the echo canceller) on the devices' threads."""
        self._loop = loop
        self._source = source
        self._sink = sink
        a = self.settings.audio
        if a.echo_setting == "auto":
            logger.info("audio.echo: auto: %s (%s)", a.echo, a.echo_reason)
        if self.settings.audio.echo == "aec":
            if hasattr(source, "frame_filter"):
                self.echo = build_echo(self.settings.audio.frame_ms, self._bypass_from_thread)
            else:
                logger.info("audio.echo: aec: this mic (%s) has no acoustic path to cancel; "
                            "running full duplex", type(source).__name__)
                self.echo_mode = "full_duplex"
        self.mix = SpeakerMix(sink, self.echo)
        if hasattr(sink, "output_filter"):
            sink.output_filter = self.mix
        if self.echo is not None:
            source.frame_filter = self._filter = EchoFilter(self.echo, self.mix, source)
            self._kept_bulk_ms = self._read_delay()
            self._preset_delay()
            logger.info("echo cancellation on (speexdsp, %d ms blocks, %d ms tail)",
                        self.echo.frame * 1000 // SAMPLE_RATE,
                        self.echo.tail * 1000 // SAMPLE_RATE)
        if self.detector is not None:
            logger.info("wake word: listening for %s", ", ".join(self.detector.models))

    def devices_reopened(self) -> None:
        """The mic and speaker were opened again: a new echo path, no stale earcons."""
        if self.mix is not None:
            self.mix.clear()
        if self.echo is not None:
            self.echo.reset()
            self._preset_delay()  # most likely the same devices: the estimator checks

    # ------------------------------------------------------------------ echo delay

    def _read_delay(self) -> int | None:
        """The bulk delay kept in the state file, or None (no file, or one refused)."""
        path, echo = self._delay_file, self.echo
        if path is None or echo is None:
            return None
        limit = echo.max_delay_ms
        try:
            data, _ = guard.read_small_file(path, 64)
            text = data.decode("ascii").strip()
            if not text.isdigit() or not 0 <= int(text) <= limit:
                raise ValueError(f"not a whole number of ms in 0..{limit}: "
                                 f"{guard.printable(text, 40)}")
            return int(text)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # FileRefused, UnicodeDecodeError too
            logger.warning("echo delay file %s ignored (%s): the delay is estimated afresh",
                           path, guard.printable(e, 200))
            return None

    def _preset_delay(self) -> None:
        if self.echo is not None and self._kept_bulk_ms is not None:
            self.echo.preset(self._kept_bulk_ms)
            self._bulk_source = "kept"
            logger.info("echo delay: starting from the %d ms kept in %s", self._kept_bulk_ms,
                        self._delay_file)

    def _keep_delay(self) -> None:
        """Write the bulk delay the canceller found, when it is new (on the loop)."""
        echo = self.echo
        if echo is None or not echo.bulk_estimated:
            return
        bulk_ms = echo.bulk * 1000 // SAMPLE_RATE
        if self._delay_file is None or bulk_ms == self._kept_bulk_ms:
            return
        self._kept_bulk_ms = bulk_ms
        guard.keep_small_file(self._delay_file, f"{bulk_ms}\n", "echo delay", logger)

    def capturing(self, on: bool) -> None:
        """The mic's stream runs (``on``) or stops (the supervisor, on the loop).

        With the canceller the speaker runs while the mic does (its reference must run
        through the silence between replies); with the mic off there is nothing to
        cancel, so it may idle then (issue 21). The filter and the bulk delay stay for
        the next press; the restart is a gap in the speaker's timeline, which has the
        filter show again that it fits before the gate opens.
        """
        hold = getattr(self._sink, "hold_awake", None)
        if self.echo is not None and hold is not None:
            hold(on)

    def _bypass_from_thread(self, on: bool, reason: str) -> None:
        # the canceller calls this on the mic's thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_bypass, on, reason)

    def on_bypass(self, on: bool, reason: str) -> None:
        """The canceller bypassed itself (``on``) or resumed: half duplex meanwhile."""
        self._bypassed = on
        self.echo_mode = "aec bypassed (half duplex)" if on else "aec"
        logger.warning("%s: %s", reason, "half duplex until it resumes" if on
                       else "full duplex again")
        self._half_duplex(on)
        self._apply()

    @property
    def _aec_working(self) -> bool:
        return self.echo is not None and not self._bypassed

    # ------------------------------------------------------------------ mic

    def mic_frame(self, frame: bytes) -> bytes:
        """A mic frame on its way to the core (heard for the wake word).

        In half duplex it comes back as silence while an earcon plays, and a tail after.
        """
        # the convergence gate (until the filter cancels the echo, silence in its place,
        # so the server's VAD and the wake word never hear the reply) is the canceller's
        # own, block by block on the mic's thread: build_echo(gate=True)
        speaking = self._state == "speaking"
        playing = self.mix is not None and self.mix.playing
        if self.detector is not None and not playing:
            if speaking and not self._aec_working:
                pass  # it would hear the reply; the refractory counts audio fed anyway
            elif not self._mic_on or speaking:
                for det in self.detector.feed(frame):
                    self._detected(det)
        if self.echo_mode in ("full_duplex", "aec"):
            return frame
        if playing:
            self._gate_samples = SAMPLE_RATE * self.settings.audio.echo_tail_ms // 1000
            return bytes(len(frame))
        if self._gate_samples > 0:
            self._gate_samples -= len(frame) // BYTES_PER_SAMPLE
            return bytes(len(frame))
        return frame

    def _detected(self, det: Detection) -> None:
        self.detections.append(det)
        del self.detections[:-16]
        logger.info("wake word %r heard (score %.2f)", det.phrase, det.score)
        if self._mic_on and self._state != "speaking":
            return  # listening already: a press would switch the mic off
        self.wake_presses += 1
        # not inside the mic frame's own hand-over to the core: on the loop, next
        assert self._loop is not None
        self._loop.call_soon(self._press)

    # ------------------------------------------------------------------ earcons

    def play(self, event: str) -> bool:
        """Play ``event``'s earcon at its gain times the volume; False when it is off."""
        gain = self.settings.earcons.gain_of(event)
        loud = round(gain * (self._volume() / 100) ** 2, 2)
        if loud <= 0 or self.mix is None:
            return False
        self.mix.add(earcons.render(event, loud))
        self.earcons_played[event] = self.earcons_played.get(event, 0) + 1
        logger.debug("earcon %s", event)
        return True

    def on_state(self, state: str, status: dict[str, Any]) -> None:
        """The supervisor showed ``state``; ``status`` is the core's status then."""
        self._keep_delay()
        mic_on = status.get("mic") == "on"
        connected = bool(status.get("connected"))
        conversation = status.get("conversation_id")
        if self._conversation is not None and conversation != self._conversation:
            self.play("new_conversation")
            self._quiet_reconnect = True  # its own reconnect is no outage
        elif mic_on != self._mic_on:
            self.play("listening_started" if mic_on else "listening_stopped")
        if connected and not self._connected and self._was_connected:
            if not self._quiet_reconnect:
                self.play("reconnected")
            self._quiet_reconnect = False
        if state == "error" and self._state != "error":
            self.play("error")
        self._was_connected |= connected
        self._state, self._mic_on, self._connected = state, mic_on, connected
        self._conversation = conversation if isinstance(conversation, str) else None

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Fields for ``voiced ctl status``."""
        out: dict[str, Any] = {"echo": self.echo_mode,
                               "echo_setting": self.settings.audio.echo_setting}
        if self.echo is not None:
            out["aec_cost_ms"] = round(self.echo.mean_cost_s() * 1000, 3)
            # where the adapted filter found the echo, behind the speaker's position: on
            # a device, how much of the tail the speaker's buffering and the room use
            out["aec_echo_delay_ms"] = round(self.echo.echo_delay_ms(), 1)
            out["aec_realigned"] = self.echo.realigned
            out["aec_bulk_ms"] = self.echo.bulk * 1000 // SAMPLE_RATE
            # "estimated": found here; "kept": from the state file, not confirmed yet
            out["aec_bulk_from"] = ("estimated" if self.echo.bulk_estimated
                                    else self._bulk_source)
            out["aec_replayed_blocks"] = self.echo.replayed
            out["aec_converged"] = self.echo.converged
            out["aec_erle_db"] = round(self.echo.erle_db(), 1)
            out["aec_gated_blocks"] = self.echo.gated
            if self._filter is not None:
                # mic frames paired with the speaker by PortAudio's timestamps, and how
                # far the count handed over ran ahead of them (the devices' buffering)
                out["aec_timed_frames"] = self._filter.timed
                out["aec_handed_lead_ms"] = round(self._filter.lead * 1000 / SAMPLE_RATE)
            if self.mix is not None:
                # periods that played later than the timeline said (restart, underrun)
                out["aec_speaker_gaps"] = self.mix.gaps
            # mic samples PortAudio dropped: each moves the echo against the reference
            out["aec_mic_overflows"] = int(getattr(self._source, "overflows", 0) or 0)
        if self.detector is not None:
            out["wake_word"] = {"models": list(self.detector.models),
                                "detections": self.wake_presses}
        out["earcons_played"] = dict(self.earcons_played)
        out["earcon_pending"] = self.mix is not None and self.mix.playing  # not yet handed
        return out
