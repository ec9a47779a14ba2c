"""The composition root: builds the adapters, owns every task, pumps events and effects.

Only this module sees both the session core and the adapters. Sequence: open the local
devices → READY → run the mic pump, the connection loop, the watchdog and the control
socket in one TaskGroup → on SIGTERM/SIGINT stop, close everything, exit 0.

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
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from voiced import __version__, config, guard, wire
from voiced.audio import AudioSink, AudioSource
from voiced.audio.volume import Volume
from voiced.button import ButtonInput
from voiced.config import Settings
from voiced.control import ControlServer
from voiced.errors import AudioDeviceError, ConfigError, RealtimeError
from voiced.hands_free import HandsFree  # issue 22
from voiced.hardware import build_button, build_orb
from voiced.notify import Notifier
from voiced.orb import Animator
from voiced.outbox import Outbox
from voiced.realtime import Backoff, build_url, classify, open_connection
from voiced.session import (
    CallTool,
    CancelTool,
    ClientVad,
    CloseStandby,
    Conversation,
    Draft,
    Effect,
    MicOpened,
    OpenStandby,
    Play,
    Policy,
    Reconnect,
    Record,
    Send,
    ShowState,
    State,
    StopPlayback,
    SwitchToStandby,
    make_policy,
)
from voiced.sinks import build_sink
from voiced.tools import Toolbox
from voiced.tools.builtin import builtin_tools, network_status, system_uptime_s
from voiced.transcripts import iso_utc, make_record

if TYPE_CHECKING:
    from voiced.audio.vad import SpeechDetector

logger = logging.getLogger(__name__)

_STABLE_S = 60.0  # a connection that lasted this long resets the backoff
# close 4000 (request shape refused) answering this many set-ups in a row is final; the
# very first set-up of the daemon's life needs only one (the config is wrong)
_SHAPE_REFUSALS = 3


class _StopRequested(Exception):
    """Raised inside the task group to end it."""


@dataclasses.dataclass(eq=False)
class _Link:
    """One Realtime connection: its socket, its send queue, its reader and sender.

    Two exist only during a rollover: the live one and the standby being prepared.
    """

    ws: ClientConnection
    queue: asyncio.Queue[wire.ClientEvent] = dataclasses.field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    @property
    def reader(self) -> asyncio.Task[None]:
        return self.tasks[0]


SOUND_DIR = Path("/dev/snd")


def sound_cards() -> frozenset[str]:
    """The ALSA device nodes present (empty where there are none, as in a container)."""
    try:
        return frozenset(os.listdir(SOUND_DIR))
    except OSError:
        return frozenset()


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

    return (PyAudioSource(a.input, frame_ms=a.frame_ms),
            PyAudioSink(a.output, period_ms=a.period_ms, jitter_ms=a.jitter_ms,
                        max_queued_s=a.max_queued_s))


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
        send_model=rt.relay is None, reseed_turns=rt.reseed_turns,
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
    cid = (rt.relay.conversation_id if rt.relay and rt.relay.conversation_id
           else str(uuid.uuid4()))
    return Conversation(policy, conversation_id=cid, new_id=lambda: str(uuid.uuid4()))


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
    """

    def __init__(self, settings: Settings, *, source: AudioSource | None = None,
                 sink: AudioSink | None = None, notifier: Notifier | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 listener: Callable[[str, Any], None] | None = None,
                 pin_factory: Any = None, spi: Any = None) -> None:
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
        # how reconnect delays are waited out (tests fast-forward them)
        self.backoff_wait: Callable[[Awaitable[Any], float], Awaitable[Any]] = \
            asyncio.wait_for
        self.button: ButtonInput | None = None
        self.orb = Animator(None, settings.leds.patterns, fps=settings.leds.fps)
        tl = settings.tools
        self.volume = Volume(tl.volume_file or settings.transcripts.outbox_dir.parent / "volume")
        tools = builtin_tools(tl.builtin, self, timezone=tl.timezone, timeout_s=tl.timeout_s,
                              volume_floor=tl.volume_floor_percent)
        if tl.http:
            from voiced.tools.http import http_tool  # aiohttp: 25 MB, only when needed

            tools += [http_tool(spec) for spec in tl.http]
        self.toolbox = Toolbox(tools)
        self._tool_tasks: dict[str, asyncio.Task[None]] = {}
        self.session = build_conversation(settings, self.toolbox.declarations())
        self.vad = self._build_vad(settings)
        # issue 22: echo cancellation, wake word and earcons (voiced/hands_free.py)
        self.hands = HandsFree(settings, self.session, press=lambda: self._on_gesture("press"),
                               apply=lambda: self._apply(self.session.take_effects()),
                               volume=lambda: self.volume.percent)
        self._started = time.monotonic()
        self.control = ControlServer(settings.control.socket, self._on_control,
                                     max_connections=settings.control.max_connections)
        tr = settings.transcripts
        self.outbox: Outbox | None = None
        if tr.sink != "none":
            backend = build_sink(tr, device_id=settings.device_id,
                                 agent_id=settings.realtime.relay.agent_id
                                 if settings.realtime.relay else None)
            self.outbox = Outbox(tr.outbox_dir, backend, max_records=tr.max_records,
                                 max_bytes=tr.max_bytes, max_drafts=tr.max_drafts,
                                 retry_max_s=tr.retry_max_s)
        self._link: _Link | None = None  # the live connection
        self._standby: _Link | None = None  # the next session, during a rollover
        self._link_tasks: set[asyncio.Task[None]] = set()  # opening/closing in background
        self._reconnect_now = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.malformed_frames = 0
        self.records_written = 0
        self._ever_configured = False  # some session was configured since the start
        # audio device recovery: the mic pump reports faults, one task reopens
        self._audio_ok = asyncio.Event()
        self._audio_ok.set()
        self._audio_generation = 0  # bumped on every reopen; stale errors are ignored
        self._audio_faults: asyncio.Queue[str] = asyncio.Queue()
        self.device_faults = 0

    def _build_vad(self, settings: Settings) -> SpeechDetector | None:
        """The on-device VAD, when the core's policy asks for client_vad."""
        if self.session.policy.client_vad is None:
            return None
        from voiced.audio.vad import SpeechDetector  # webrtcvad: only for client_vad

        return SpeechDetector(settings.realtime.turn_detection.vad_aggressiveness)

    def _url(self) -> str:
        """Where the next connection goes (a relay also gets the conversation id)."""
        rt = self.settings.realtime
        return build_url(rt, self.session.conversation_id if rt.relay else None)

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        """Ask the daemon to stop (signal handlers call this)."""
        self._stop.set()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

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
            self.hands.install(self.source, self.sink, self._loop)  # issue 22
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
            self._audio_ok.clear()
            self._audio_faults.put_nowait(startup_fault)
        self.notifier.ready()
        logger.info("voiced %s running as %s", __version__, self.settings.device_id)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._mic_pump(), name="mic")
                tg.create_task(self._audio_watch(), name="audio-watch")
                tg.create_task(self._clock(), name="clock")
                tg.create_task(self._connection_loop(), name="realtime")
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
        """SIGHUP: re-read the config; apply what can be applied live, keep the rest.

        What applies live is declared on the settings (``config.LIVE``); every other key
        keeps its running value, everywhere, until a restart, and is logged as such. The
        realtime keys are read where they are used: the URL, model, key and timeouts
        from the next connection, the session's (voice, instructions, turn detection,
        transcription) from the next session. An invalid new config is rejected with the
        usual error lines and the running one stays in force.
        """
        self.notifier.reloading()
        status = "reload failed (logged)"
        try:
            with guard.contain("reload", logger):
                status = self._reload()
        finally:  # systemd waits for READY=1 after RELOADING=1, whatever happened
            self.notifier.status(f"{status}; {self.session.state}")
            self.notifier.ready()

    def _reload(self) -> str:
        """Apply the config file again; return what STATUS= says about it."""
        path = self.settings.source_path
        try:
            if path is None:
                raise ConfigError([("config", "these settings did not come from a file")])
            new = config.load(path)
        except ConfigError as e:
            for line in e.lines():
                logger.error("%s", line)
            logger.error("reload rejected: the running configuration stays in force")
            return f"reload rejected ({len(e.problems)} problem(s))"
        for key, message in new.warnings:
            logger.warning("%s: %s", key, message)
        plan = config.reload_split(self.settings, new)
        self.settings = plan.settings
        self.session.set_policy(build_policy(self.settings, self.toolbox.declarations()))
        self._apply(self.session.take_effects())
        self.vad = self._build_vad(self.settings)
        self.orb.set_patterns(self.settings.leds.patterns)
        logging.getLogger().setLevel(self.settings.log_level.upper())
        if plan.live:
            logger.info("reloaded: %s (the connection's settings apply from the next "
                        "connection, the session's from the next session)",
                        ", ".join(plan.live))
        if plan.restart:
            logger.warning("changed but only applied after a restart (the running values "
                           "stay until then): %s", ", ".join(plan.restart))
        if not plan.live and not plan.restart:
            logger.info("reloaded: nothing changed")
        return "reloaded"

    async def _wait_for_stop(self) -> None:
        await self._stop.wait()
        raise _StopRequested

    async def _close(self) -> None:
        if self.button is not None:
            self.button.close()
        self.orb.close()
        closers = [self.control.aclose, self.source.aclose, self.sink.aclose]
        if self.outbox is not None:
            closers.append(self.outbox.aclose)  # pending records reach the disk
        for closer in closers:
            try:
                await closer()
            except Exception:  # noqa: BLE001 - closing must go on whatever one part does
                logger.exception("error while closing")
        for task in [*self._link_tasks, *self._tool_tasks.values()]:
            task.cancel()
        for link in (self._link, self._standby):
            if link is not None:
                await self._close_link(link)

    # ------------------------------------------------------------------ pumps

    async def _mic_pump(self) -> None:
        while True:
            await self._audio_ok.wait()
            generation = self._audio_generation
            try:
                frame = await self.source.read()
            except AudioDeviceError as e:
                # an error from a source that was already replaced is old news
                if generation == self._audio_generation and self._audio_ok.is_set():
                    self._audio_ok.clear()
                    self._audio_faults.put_nowait(str(e))
                continue
            self._feed("mic", self._on_mic_frame, frame)

    def _on_mic_frame(self, frame: bytes) -> None:
        frame = self.hands.mic_frame(frame)  # issue 22: wake word; earcons kept out
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

    async def _audio_watch(self) -> None:
        """Check the speaker every second; reopen the audio devices when one fails."""
        while True:
            try:
                reason = await asyncio.wait_for(self._audio_faults.get(), 1.0)
            except TimeoutError:
                try:
                    self.sink.check()
                    continue
                except AudioDeviceError as e:
                    reason = str(e)
            with guard.contain("audio watch", logger):
                await self._reopen_audio(reason)

    async def _reopen_audio(self, reason: str) -> None:
        """Close mic and speaker, and retry opening both until they open.

        The first retry comes after ``audio.reopen_s``, each next one twice as long
        after, up to ``audio.reopen_max_s``; a change in the sound cards in /dev/snd (a
        USB device plugged back in) brings the next one forward. Both are reopened
        because PortAudio only enumerates devices afresh once every stream is closed,
        and a replugged USB device may come back under a new card. *Why the backoff:*
        each attempt starts PortAudio afresh, and with ALSA's libasound2-plugins
        installed each start keeps 12 kB for good (README, soak); retrying every 3 s
        through a day-long outage would be 350 MB.
        """
        self._audio_ok.clear()
        self.device_faults += 1
        a = self.settings.audio
        delay = a.reopen_s
        logger.error("audio device failed: %s; reopening after %g s, then less and less "
                     "often (up to every %g s)", reason, delay, a.reopen_max_s)
        self.session.on_interrupt(self._now())  # what was queued is lost with the device
        self._apply(self.session.take_effects())
        self.session.on_device_fault(f"{reason}; retrying")
        self._apply(self.session.take_effects())
        attempts = 0
        while True:
            for closer in (self.source.aclose, self.sink.aclose):
                try:
                    await closer()
                except Exception as e:  # noqa: BLE001 - a dead device may fail to close
                    logger.debug("closing a failed audio device: %s", e)
            await self._wait_for_sound_cards(delay, step=a.reopen_s)
            delay = min(delay * 2, a.reopen_max_s)
            attempts += 1
            try:
                await self.source.start()
                await self.sink.start()
            except (AudioDeviceError, ConfigError) as e:
                why = "; ".join(e.lines()) if isinstance(e, ConfigError) else str(e)
                logger.log(logging.WARNING if attempts == 1 else logging.DEBUG,
                           "audio devices still unavailable (attempt %d): %s", attempts, why)
                continue
            break
        self._audio_generation += 1
        self._audio_ok.set()
        self.hands.devices_reopened()  # issue 22
        logger.info("audio devices open again after %d attempt(s)", attempts)
        self.session.on_device_restored()
        self._apply(self.session.take_effects())

    async def _wait_for_sound_cards(self, seconds: float, *, step: float) -> None:
        """Sleep ``seconds``, but return early once the sound cards in /dev/snd change."""
        before = sound_cards()
        end = self._now() + seconds
        while (left := end - self._now()) > 0:
            await asyncio.sleep(min(step, left))
            if sound_cards() != before:
                logger.info("sound cards changed; trying the audio devices now")
                return

    def _on_drained(self) -> None:
        self._feed("playback", lambda: self.session.on_playback_drained(self._now()))

    async def _connection_loop(self) -> None:
        rt = self.settings.realtime
        backoff = Backoff(rt.reconnect_min_s, rt.reconnect_max_s)
        failures = refusals = 0
        while True:
            rt = self.settings.realtime  # a SIGHUP may have changed it
            backoff.min_s, backoff.max_s = rt.reconnect_min_s, rt.reconnect_max_s
            url = self._url()
            started = self._now()
            err: RealtimeError | None = None
            try:
                reason = await self._run_connection(url)
            except RealtimeError as e:
                err, reason = e, str(e)
            except OSError as e:
                err = classify(e)
                reason = str(err)
            except Exception as e:  # noqa: BLE001 - a bug here must not end the daemon
                guard.note_fault("realtime connection", e, logger)
                err = RealtimeError(f"unexpected error ({type(e).__name__})", retryable=True)
                reason = str(err)
            was_configured = self.session.connected
            self._ever_configured = self._ever_configured or was_configured
            self._feed("realtime", self.session.on_connection_down, reason)
            if self._reconnect_now.is_set():
                self._reconnect_now.clear()
                backoff.reset()
                continue
            if self._now() - started >= _STABLE_S:
                backoff.reset()
                failures = 0
            refusals = 0 if was_configured else refusals
            if err is not None and not err.retryable:
                # close 4000 (the beta dialect, an unknown model): final when it answers
                # the first set-up, or set-up after set-up; systemd's
                # RestartPreventExitStatus=78 then keeps the service down. A relay may
                # send it at any other moment: that is retried like any close.
                refusals += 1
                if not self._ever_configured or refusals >= _SHAPE_REFUSALS:
                    self.notifier.status(f"stopped: {reason}")
                    raise ConfigError([("realtime.url", f"the server refused the session: "
                                        f"{reason}; check realtime.url and realtime.model")])
                logger.warning("realtime: %s, %s; retrying", reason,
                               "mid-session" if was_configured else
                               f"{refusals} set-up(s) in a row")
            if err is not None and err.auth:
                fatal = reason if "openai_api_key" in reason else f"{reason}: check the API key"
                self._feed("realtime", self.session.on_fatal, fatal)
                delay = rt.reconnect_max_s
            else:
                delay = backoff.next()
            failures += 1
            log = logger.warning if failures == 1 else logger.debug
            log("realtime: %s; reconnecting in %.1f s", reason, delay)
            self.notifier.status(f"reconnecting in {delay:.0f} s: {reason}")
            with contextlib.suppress(TimeoutError):
                await self.backoff_wait(self._reconnect_now.wait(), delay)
            self._reconnect_now.clear()

    async def _open(self, url: str) -> ClientConnection:
        rt = self.settings.realtime
        key = rt.api_key.reveal() if rt.api_key else None
        return await open_connection(url, key, timeout_s=rt.connect_timeout_s,
                                     user_agent=f"voiced/{__version__}",
                                     keepalive_s=rt.keepalive_s)

    def _start_link(self, ws: ClientConnection) -> _Link:
        link = _Link(ws)
        link.tasks += [asyncio.create_task(self._reader(link), name="realtime-read"),
                       asyncio.create_task(self._sender(link), name="realtime-send")]
        return link

    async def _close_link(self, link: _Link, reason: str = "") -> None:
        await link.ws.close(1000, reason)
        for task in link.tasks[1:]:
            task.cancel()
        await asyncio.gather(*link.tasks, return_exceptions=True)

    def _background(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            with guard.contain(name, logger):  # nobody awaits it: never lose a fault
                await coro

        task: asyncio.Task[None] = asyncio.ensure_future(guarded())
        task.set_name(name)
        self._link_tasks.add(task)
        task.add_done_callback(self._link_tasks.discard)

    async def _run_connection(self, url: str) -> str:
        """Hold the live connection (and those a rollover moves it to) until it ends.

        Returns why it ended, in a few words.

        Raises:
            RealtimeError: the connection failed (classified).
        """
        rt = self.settings.realtime
        link = self._start_link(await self._open(url))
        self._link = link
        logger.info("connected to %s", url.split("?")[0])
        self._feed("realtime", self.session.on_connection_up)
        timed_out = False

        async def close_on_reconnect() -> None:
            await self._reconnect_now.wait()
            if self._link is not None:
                await self._link.ws.close(1000, "client reconnecting")

        async def configure_deadline() -> None:
            nonlocal timed_out
            await asyncio.sleep(rt.connect_timeout_s)
            if not self.session.connected:
                timed_out = True
                await link.ws.close(1000, "no session in time")

        helpers = [asyncio.create_task(close_on_reconnect(), name="realtime-reconnect"),
                   asyncio.create_task(configure_deadline(), name="realtime-deadline")]
        try:
            while True:
                # a rollover replaces self._link: the old link's end is then expected
                current = self._link
                assert current is not None
                await asyncio.wait([current.reader])
                if self._link is current:
                    break
            current.reader.result()  # raises the classified failure
        finally:
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            for old in (self._link, self._standby):
                if old is not None:
                    await self._close_link(old)
            self._link = self._standby = None
        if timed_out:
            raise RealtimeError(f"no session.created/updated within {rt.connect_timeout_s:g} s",
                                retryable=True)
        if self._reconnect_now.is_set():
            return "reconnect requested"
        ws = current.ws
        return f"server closed {ws.close_code}" + (
            f": {guard.printable(ws.close_reason, 123)}" if ws.close_reason else "")

    async def _open_standby(self) -> None:
        """Open the next session for a rollover; the core configures it and switches."""
        rt = self.settings.realtime
        try:
            ws = await self._open(self._url())
        except (RealtimeError, OSError) as e:
            reason = str(e if isinstance(e, RealtimeError) else classify(e))
            self._feed("realtime standby", self.session.on_standby_down, reason, self._now())
            return
        if self.session.standby is None or self._link is None:  # no longer wanted
            await ws.close(1000, "not needed")
            return
        link = self._standby = self._start_link(ws)
        self._feed("realtime standby", self.session.on_standby_up)
        await asyncio.sleep(rt.connect_timeout_s)
        if self._standby is link and self.session.standby != "ready":
            self._standby = None
            await self._close_link(link, "no session in time")
            self._feed("realtime standby", self.session.on_standby_down,
                       "no session.updated in time", self._now())

    async def _reader(self, link: _Link) -> None:
        try:
            async for frame in link.ws:
                self._feed("realtime frame", self._on_frame, frame, link)
        except ConnectionClosed as e:
            raise classify(e) from e
        except Exception as e:  # noqa: BLE001 - the connection is lost, not the daemon
            guard.note_fault("realtime read", e, logger)
            raise RealtimeError(f"unexpected error reading ({type(e).__name__})",
                                retryable=True) from e
        finally:
            if link is self._standby:  # the next session ended before the switch
                self._standby = None
                self._feed("realtime standby", self.session.on_standby_down,
                           f"closed {link.ws.close_code}", self._now())

    def _on_frame(self, frame: str | bytes, link: _Link) -> None:
        """One frame into the core (``_feed`` contains and applies what follows)."""
        try:
            ev = wire.parse_server_event(frame)
        except wire.MalformedEvent as e:
            self.malformed_frames += 1
            skipped = guard.should_log("supervisor:malformed-frame")
            if skipped is not None:
                logger.warning("ignoring malformed server frame (%d so far%s): %s",
                               self.malformed_frames,
                               f", {skipped} not shown since the last" if skipped else "",
                               guard.printable(e, 200))
            return
        if link is self._standby:
            self.session.on_standby_event(ev, self._now())
        elif link is self._link:
            if isinstance(ev, wire.SessionUpdated) and self.session.fatal_reason is not None:
                self.session.on_fatal_cleared()
            self.session.on_server_event(ev, self._now())
        else:  # the session a rollover left, closing
            logger.debug("old session: %s", guard.printable(getattr(ev, "type", "?"), 100))

    async def _sender(self, link: _Link) -> None:
        debug = logger.isEnabledFor(logging.DEBUG)
        while True:
            event = await link.queue.get()
            if debug:
                logger.debug("send %s", guard.printable(wire.describe(event)))
            try:
                text = wire.encode(event)
            except Exception as e:  # noqa: BLE001 - one event lost, not the connection
                guard.note_fault("realtime send", e, logger)
                continue
            await link.ws.send(text)

    async def _retire(self, link: _Link) -> None:
        """Close the session a rollover left, once what was queued for it is sent."""
        for _ in range(50):
            if link.queue.empty():
                break
            await asyncio.sleep(0.02)
        await self._close_link(link, "session rollover")

    # ------------------------------------------------------------------ effects

    def _apply(self, effects: list[Effect]) -> None:
        for eff in effects:
            # one effect that fails (a bug) must not cost the others, or the daemon
            with guard.contain(f"effect {type(eff).__name__}", logger):
                self._apply_one(eff)

    def _apply_one(self, eff: Effect) -> None:
        match eff:
            case Send():
                link = self._standby if eff.standby else self._link
                if link is not None:
                    link.queue.put_nowait(eff.event)
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
                logger.info("reconnecting: %s", eff.reason)
                self._reconnect_now.set()
            case MicOpened():
                self.source.mic_opened()
            case CallTool():
                task = asyncio.create_task(self._run_tool(eff), name=f"tool-{eff.name}")
                self._tool_tasks[eff.call_id] = task
            case CancelTool():
                running = self._tool_tasks.pop(eff.call_id, None)
                if running is not None:
                    running.cancel()
            case OpenStandby():
                self._background(self._open_standby(), "realtime-standby")
            case SwitchToStandby():
                if self._standby is None:  # cannot happen; never strand the core
                    logger.error("rollover without a standby connection: reconnecting")
                    self._reconnect_now.set()
                    return
                old, self._link, self._standby = self._link, self._standby, None
                if old is not None:
                    self._background(self._retire(old), "realtime-retire")
                logger.info("now on the next session")
            case CloseStandby():
                if self._standby is not None:
                    link, self._standby = self._standby, None
                    self._background(self._close_link(link, eff.reason),
                                     "realtime-standby-close")

    async def _run_tool(self, call: CallTool) -> None:
        # a task of its own: a slow tool never holds up audio or the socket
        try:
            output = await self.toolbox.run(call.name, call.arguments)
        except Exception as e:  # noqa: BLE001 - Toolbox.run never raises; if it did, the
            # call must still be answered, or the conversation waits for it for good
            guard.note_fault("tool", e, logger)
            output = '{"error": "the tool failed unexpectedly"}'
        finally:
            self._tool_tasks.pop(call.call_id, None)
        self._feed("tool result", self.session.on_tool_result, call.call_id, output,
                   self._now())

    # the Device the built-in tools act on

    def mute_mic(self) -> None:
        """Built-in tool: the microphone off."""
        self.session.mute_mic()
        self._apply(self.session.take_effects())

    def end_conversation(self) -> None:
        """Built-in tool: a new conversation once the reply has been heard."""
        self.session.end_conversation()

    def volume_percent(self) -> int:
        """Built-in tool: the speaker volume."""
        return self.volume.percent

    def set_volume(self, percent: int) -> int:
        """Built-in tool: set and persist the speaker volume."""
        return self.volume.set(percent)

    async def device_status(self) -> dict[str, Any]:
        """Built-in tool: network, uptimes, transcript backlog, connection."""
        return {**await network_status(self.settings.realtime.url),
                "daemon_uptime_s": round(time.monotonic() - self._started),
                "system_uptime_s": system_uptime_s(),
                "transcripts_waiting": self.outbox.pending if self.outbox else 0,
                "volume_percent": self.volume.percent,
                "version": __version__}

    def _show(self, state: State, detail: str) -> None:
        text = str(state) if detail == str(state) else f"{state}: {detail}"
        logger.info("state %s", text)
        self.notifier.status(text)
        self.orb.set_state(str(state))
        self.hands.on_state(str(state), self.session.status())  # issue 22: earcons
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
        """The contract's status object.

        ``faults`` counts unexpected exceptions contained, by boundary (empty when all is
        well); ``audio_queued_ms``, ``pending_items`` and ``transcript_bytes`` show the
        resource bounds at work.
        """
        st = self.session.status()
        exp = st.pop("session_expires_at")
        try:
            expires = iso_utc(exp) if exp else None
        except (ValueError, OverflowError, OSError):  # never a reason for status to fail
            expires = None
        return {**st, "session_expires_at": expires,
                "outbox_pending": self.outbox.pending if self.outbox else 0,
                "version": __version__,
                "device_id": self.settings.device_id,
                "malformed_frames": self.malformed_frames,
                "records_written": self.records_written,
                "device_faults": self.device_faults,
                "audio_queued_ms": round(self.sink.queued_s * 1000),
                **self.hands.status(),  # issue 22
                "faults": dict(guard.faults)}

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
        now = self._now()
        if cmd == "volume":
            if args and "percent" in args:  # a person may go to 0 %: the model has a floor
                try:
                    self.volume.set(args["percent"])
                except AudioDeviceError as e:
                    return {"ok": False, "error": f"volume: {e}"}
            return {"ok": True, "volume_percent": self.volume.percent,
                    "status": self.status()}
        if cmd == "press":
            self.session.on_press(now)
        elif cmd == "long-press":
            self.session.on_long_press(now)
        elif cmd == "interrupt":
            self.session.on_interrupt(now)
        self._apply(self.session.take_effects())
        return {"ok": True, "status": self.status()}
