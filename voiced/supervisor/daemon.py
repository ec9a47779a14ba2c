"""The composition root: builds the parts, wires them, and runs them in one TaskGroup.

Only this package sees both the conversation core and the adapters. Sequence: open the
local devices → READY → run the mic pump, the audio watch, the clock, the connections,
the watchdog, the orb, the outbox and the stop waiter in one TaskGroup → on
SIGTERM/SIGINT stop, close everything, exit 0. The parts: :mod:`.builders` (what is
built from the settings), :mod:`.connection` (the live and standby links),
:mod:`.audio_keeper` (device fault recovery), :mod:`.tool_runner` (tool calls),
:mod:`.reload` (SIGHUP) and :mod:`.answers` (the control socket).

A failed task ends the TaskGroup and the daemon, so every task that handles server data
(the reader, the sender, the effect loop, tools, the clock, the pumps) has a last line
of defence: an unexpected exception is counted in ``guard.faults`` (``status`` shows
them), logged rate-limited, and the frame or effect is dropped; the conversation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from voiced import __version__, guard, wire
from voiced.audio import AudioSink, AudioSource
from voiced.audio.volume import Volume
from voiced.button import ButtonInput
from voiced.config import Settings
from voiced.control import ControlServer
from voiced.core.effects import (
    CallTool,
    CancelTool,
    CloseStandby,
    Draft,
    Effect,
    MicOpened,
    OpenStandby,
    Play,
    Reconnect,
    Record,
    Send,
    ShowState,
    State,
    StopPlayback,
    SwitchToStandby,
)
from voiced.errors import AudioDeviceError, ConfigError
from voiced.hands_free import ECHO_DELAY_FILE, HandsFree
from voiced.link import Link, Spawn
from voiced.live.core import Disconnect
from voiced.notify import Notifier
from voiced.orb import Animator
from voiced.supervisor import answers, reload
from voiced.supervisor.audio_keeper import AudioKeeper
from voiced.supervisor.builders import (
    build_audio,
    build_button,
    build_conversation,
    build_live_conversation,
    build_orb,
    build_outbox,
    build_toolbox,
    build_vad,
)
from voiced.supervisor.connection import Connections
from voiced.supervisor.live_connection import LiveConnections
from voiced.supervisor.ports import Core
from voiced.supervisor.tool_runner import ToolRunner
from voiced.transcripts import make_record

if TYPE_CHECKING:
    from voiced.audio.vad import SpeechDetector

logger = logging.getLogger("voiced.supervisor")  # the package logs as one


class _StopRequested(Exception):
    """Raised inside the task group to end it."""


class Supervisor:
    """Runs the daemon until asked to stop.

    Args:
        settings: validated configuration.
        source, sink: audio devices (built from the settings when None).
        notifier: sd_notify (built from the environment when None).
        wall_clock: epoch seconds, for record timestamps.
        listener: told ``("state", State)`` and ``("record", dict)`` as they happen
            (the demo prints the conversation through it).
        pin_factory: gpiozero pin factory for the button and LEDs (None: gpiozero's
            default, which honours GPIOZERO_PIN_FACTORY).
        spi: the SPI seam for an APA102 ring (None: spidev).
        clock: the monotonic clock the core is given (None: the event loop's; tests
            move their own to reach a quiet close or an expiry).
    """

    def __init__(self, settings: Settings, *, source: AudioSource | None = None,
                 sink: AudioSink | None = None, notifier: Notifier | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 listener: Callable[[str, Any], None] | None = None,
                 pin_factory: Any = None, spi: Any = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        if source is None or sink is None:
            source, sink = build_audio(settings)
        self.source = source
        self.sink = sink
        self.notifier = notifier or Notifier()
        self.wall_clock = wall_clock
        self.listener = listener or (lambda kind, data: None)
        self.pin_factory = pin_factory
        self.spi = spi
        self._clock_fn = clock
        self.button: ButtonInput | None = None
        self.orb = Animator(None, settings.leds.patterns, fps=settings.leds.fps)
        tl = settings.tools
        self.volume = Volume(tl.volume_file or settings.transcripts.outbox_dir.parent / "volume")
        self.outbox = build_outbox(settings)
        self.tools = ToolRunner(self._feed, self._apply_core, self._now, self.volume,
                                self._server_url, self.outbox)
        self.toolbox = self.tools.toolbox = build_toolbox(settings, self.tools)
        self.session: Core
        self.connections: Connections | LiveConnections
        self.vad: SpeechDetector | None = None
        half_duplex: Callable[[bool], None]  # the canceller's bypass switches it
        if settings.realtime.api == "live":  # GPT-Live: its own core and connection
            live = build_live_conversation(settings, self.toolbox.declarations())
            self.session = self.tools.session = live
            self.connections = LiveConnections(lambda: self.settings.realtime, live,
                                               self._feed, self._now, self.notifier)
            half_duplex = lambda on: live.set_settings(  # noqa: E731
                dataclasses.replace(live.settings, half_duplex=on))
        else:
            conv = build_conversation(settings, self.toolbox.declarations())
            self.session = self.tools.session = conv
            self.vad = build_vad(settings, conv.policy)
            self.connections = Connections(lambda: self.settings.realtime, conv,
                                           self._feed, self._now, self.notifier)
            half_duplex = lambda on: conv.set_policy(  # noqa: E731
                dataclasses.replace(conv.policy, half_duplex=on))
        # echo cancellation, wake word and earcons (voiced/hands_free.py)
        self.hands = HandsFree(settings, half_duplex, press=lambda: self._on_gesture("press"),
                               apply=self._apply_core, volume=lambda: self.volume.percent,
                               echo_delay_file=(self.volume.path.parent / ECHO_DELAY_FILE
                                                if self.volume.path else None))
        self.control = ControlServer(settings.control.socket, self._on_control,
                                     max_connections=settings.control.max_connections)
        self.audio = AudioKeeper(self.source, self.sink, settings.audio, self.session,
                                 self._feed, self._apply_core, self._on_mic_frame, self._now,
                                 reopened=self.hands.devices_reopened)
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.records_written = 0
        # a wake word listens while the mic is off: its stream keeps running (issue 21/22)
        self._keep_mic_open = self.hands.detector is not None
        self._capturing: bool | None = None  # what the source was last told

    # the parts, as the tests reach them
    @property
    def _link(self) -> Link | None:
        return self.connections.live

    @property
    def backoff_wait(self) -> Callable[[Awaitable[Any], float], Awaitable[Any]]:
        """How reconnect delays are waited out (tests fast-forward them)."""
        return self.connections.backoff_wait

    @backoff_wait.setter
    def backoff_wait(self, wait: Callable[[Awaitable[Any], float], Awaitable[Any]]) -> None:
        self.connections.backoff_wait = wait

    @property
    def _wait_for_sound_cards(self) -> Callable[..., Awaitable[None]]:
        return self.audio.wait_for_sound_cards

    @_wait_for_sound_cards.setter
    def _wait_for_sound_cards(self, wait: Callable[..., Awaitable[None]]) -> None:
        self.audio.wait_for_sound_cards = wait  # type: ignore[method-assign,assignment]

    @property
    def _tool_tasks(self) -> dict[str, asyncio.Task[None]]:
        return self.tools.tasks

    @property
    def malformed_frames(self) -> int:
        """Server frames that were not well-formed events (dropped)."""
        return self.connections.malformed_frames

    @property
    def device_faults(self) -> int:
        """Audio device faults since the start."""
        return self.audio.device_faults

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        """Ask the daemon to stop (signal handlers call this)."""
        self._stop.set()

    def _now(self) -> float:
        if self._clock_fn is not None:
            return self._clock_fn()
        assert self._loop is not None
        return self._loop.time()

    def _server_url(self) -> str:
        rt = self.settings.realtime
        return rt.live.url if rt.api == "live" else rt.url

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT or :meth:`request_stop`; return the exit status."""
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(signal.SIGHUP, self.reload)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(signal.SIGUSR2, self._watchdog_drill)
        self._apply(self.session.take_effects())
        self.notifier.status("starting: opening devices")
        startup_fault: str | None = None
        try:
            self._open_outbox()
            self.orb.driver = build_orb(self.settings, self.pin_factory, self.spi)
            self.button = build_button(self.settings, self._on_gesture, self._loop,
                                       self.pin_factory)
            self.sink.set_drained_callback(self._on_drained)
            self.hands.install(self.source, self.sink, self._loop)  # before they start
            try:
                await self.source.start()
                await self.sink.start()
            except AudioDeviceError as e:
                # not fatal: a USB mic plugged in late, or busy for a moment, must not
                # cost the appliance its service; the reopen loop takes over
                startup_fault = str(e)
            await self.control.start()  # a socket it cannot make is a ConfigError too
        except ConfigError:
            await self._close()
            raise
        self.session.on_devices_ready()
        self._apply(self.session.take_effects())
        if startup_fault is not None:
            self.audio.fault(startup_fault)
        self.notifier.ready()
        logger.info("voiced %s running as %s", __version__, self.settings.device_id)
        try:
            async with asyncio.TaskGroup() as tg:
                # the links' readers and senders, the standby's opening, tool calls: all
                # in this group, so a failure none of them contained ends the daemon
                self.connections.spawn = self.tools.spawn = self._spawner(tg)
                tg.create_task(self.audio.mic_pump(), name="mic")
                tg.create_task(self.audio.watch(), name="audio-watch")
                tg.create_task(self._clock(), name="clock")
                tg.create_task(self.connections.run(), name="realtime")
                tg.create_task(self.notifier.watchdog(), name="watchdog")
                tg.create_task(self.orb.run(), name="orb")
                if self.outbox is not None:
                    tg.create_task(self.outbox.run(), name="outbox")
                tg.create_task(self._wait_for_stop(), name="stop")
        except* _StopRequested:
            pass
        except* ConfigError as group:
            # the server refused the request shape: only the config can fix that
            raise group.exceptions[0] from None
        finally:
            await self._close()
        logger.info("stopped")
        return 0

    @staticmethod
    def _spawner(tg: asyncio.TaskGroup) -> Spawn:
        def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
            try:
                return tg.create_task(coro, name=name)
            except RuntimeError:  # the group is ending (a stop): what is closed remains
                return asyncio.create_task(coro, name=name)
        return spawn

    def _open_outbox(self) -> None:
        if self.outbox is None:
            return
        try:
            self.outbox.open()
        except OSError as e:
            raise ConfigError([("transcripts.outbox_dir",
                                f"cannot use {self.outbox.dir}: {e.strerror or e}")]) from e

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("%s received: stopping", sig.name)
        self.notifier.stopping()
        self._stop.set()

    def _watchdog_drill(self) -> None:
        """SIGUSR2: block the event loop on purpose, to prove the watchdog restarts us.

        Only when ``VOICED_WATCHDOG_DRILL_S`` is set (an administrator checking the unit,
        or the tests); otherwise the signal is logged and ignored.
        """
        raw = os.environ.get("VOICED_WATCHDOG_DRILL_S", "")
        try:
            seconds = float(raw)
        except ValueError:
            logger.warning("SIGUSR2 ignored: set VOICED_WATCHDOG_DRILL_S to block the loop "
                           "for that many seconds (a watchdog drill)")
            return
        logger.warning("watchdog drill: blocking the event loop for %g s", seconds)
        time.sleep(seconds)  # deliberately blocking: that is the drill
        logger.warning("watchdog drill over")

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply what can be applied live, keep the rest."""
        reload.reload(self)

    async def _wait_for_stop(self) -> None:
        await self._stop.wait()
        raise _StopRequested

    async def _close(self) -> None:
        if self.button is not None:
            self.button.close()
        self.orb.close()
        self._feed("stop", self.session.on_stopping)  # held transcripts reach the outbox
        closers = [self.control.aclose, self.source.aclose, self.sink.aclose]
        if self.outbox is not None:
            closers.append(self.outbox.aclose)  # pending records reach the disk
        for closer in closers:
            try:
                await closer()
            except Exception:  # noqa: BLE001 - closing must go on whatever one part does
                logger.exception("error while closing")
        self.tools.cancel_all()
        await self.connections.aclose()

    # ------------------------------------------------------------------ pumps

    def _on_mic_frame(self, frame: bytes) -> None:
        frame = self.hands.mic_frame(frame)  # the wake word hears it; earcons kept out
        speech = self.vad.is_speech(frame) if self.vad is not None else False
        self.session.on_audio_captured(frame, self._now(), speech)

    async def _clock(self) -> None:
        """Tell the core the time once a second (session rollover before expiry).

        The first tick comes at once: the core judges a session's ``expires_at`` against
        the wall clock, and the first session.created may come within the first second.
        """
        while True:
            self._feed("clock", lambda: self.session.on_tick(self._now(), self.wall_clock()))
            await asyncio.sleep(1.0)

    def _feed(self, boundary: str, give: Callable[..., None], *args: Any) -> None:
        """Give the core one input and apply the effects it asks for.

        The last line of defence for the core: an unexpected exception is counted and
        logged (guard.contain), the input is dropped, and the effects the core produced
        before it are still applied, so its state and the world stay in step.
        """
        with guard.contain(boundary, logger):
            give(*args)
        self._apply(self.session.take_effects())

    def _apply_core(self) -> None:
        """Apply the effects the core has produced so far."""
        self._apply(self.session.take_effects())

    def _on_drained(self) -> None:
        self._feed("playback", lambda: self.session.on_playback_drained(self._now()))

    # ------------------------------------------------------------------ effects

    @property
    def keep_mic_open(self) -> bool:
        """Whether the mic captures while it is off too (a wake word listens then).

        False (the default): the mic's stream stops whenever the user has the mic off,
        so in ``ready`` no audio callback reaches Python (issue 21).
        """
        return self._keep_mic_open

    @keep_mic_open.setter
    def keep_mic_open(self, on: bool) -> None:
        self._keep_mic_open = on
        self._sync_mic()

    def _sync_mic(self) -> None:
        """Run the mic's stream while the mic is on (or kept open), else stop it."""
        want = self.session.mic_on or self._keep_mic_open
        if want != self._capturing:
            self._capturing = want
            self.source.set_capturing(want)
            self.hands.capturing(want)

    def _apply(self, effects: list[Effect | Disconnect]) -> None:
        for eff in effects:
            # one effect that fails (a bug) must not cost the others, or the daemon
            with guard.contain(f"effect {type(eff).__name__}", logger):
                self._apply_one(eff)
        self._sync_mic()  # after the effects: MicOpened's file source starts first

    def _apply_one(self, eff: Effect | Disconnect) -> None:
        match eff:
            case Send():
                self.connections.send(eff.event, standby=eff.standby)
            case Play():
                pcm = self.volume.apply(eff.pcm)
                taken = self.sink.play(pcm, eff.item_id)
                if taken < len(pcm):  # the queue holds audio.max_queued_s already
                    self._feed("playback", self.session.on_playback_full, eff.item_id,
                               (len(pcm) - taken) // wire.BYTES_PER_SAMPLE, self._now())
            case StopPlayback():
                played = self.sink.stop()
                self._feed("playback", self.session.on_playback_stopped, self._now(),
                           played)
            case ShowState():
                self._show(eff.state, eff.detail)
            case Record():
                self._record(eff)
            case Draft():
                if self.outbox is not None:
                    self.outbox.put_draft(make_record(
                        eff.transcript, device_id=self.settings.device_id,
                        created_at=self.wall_clock()))
            case Reconnect():
                self.connections.reconnect(eff.reason)
            case MicOpened():
                self.source.mic_opened()
            case CallTool():
                self.tools.call(eff)
            case CancelTool():
                self.tools.cancel(eff.call_id)
            case OpenStandby() if isinstance(self.connections, Connections):
                self.connections.open_standby()
            case SwitchToStandby() if isinstance(self.connections, Connections):
                self.connections.switch()
            case CloseStandby() if isinstance(self.connections, Connections):
                self.connections.close_standby(eff.reason)
            case Disconnect() if isinstance(self.connections, LiveConnections):
                self.connections.disconnect(eff.reason)

    def _show(self, state: State, detail: str) -> None:
        text = str(state) if detail == str(state) else f"{state}: {detail}"
        logger.info("state %s", text)
        self.notifier.status(text)
        self.orb.set_state(str(state))
        self.hands.on_state(str(state), self.session.status())  # earcons
        self.listener("state", state)

    def _record(self, eff: Record) -> None:
        record = make_record(eff.transcript, device_id=self.settings.device_id,
                             created_at=self.wall_clock())
        self.listener("record", record)
        if self.outbox is not None:
            self.outbox.put(record)
            self.records_written += 1

    # ------------------------------------------------------------------ control

    def status(self) -> dict[str, Any]:
        """The contract's status object (:func:`.answers.status`)."""
        return answers.status(self)

    def _on_gesture(self, gesture: str) -> None:
        logger.debug("button: %s", gesture)
        self.listener("button", gesture)
        if gesture != "talk-end":
            self.orb.acknowledge()  # seen at once, even when nothing else changes
        give = {"press": self.session.on_press, "long-press": self.session.on_long_press,
                "talk-start": self.session.on_talk_start,
                "talk-end": self.session.on_talk_end}.get(gesture)
        if give is not None:
            self._feed("button", give, self._now())

    def _on_control(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return answers.answer(self, cmd, args)
