"""The ``pyaudio`` backend: real ALSA devices through PortAudio.

Each device crosses into the event loop in exactly one place: the PortAudio callback
thread converts what it got and hands it over with ``loop.call_soon_threadsafe``. The
speaker's callback pulls from a jitter buffer, so playback never blocks the loop, and it
counts what each item has handed to the device as the *played* position: once handed,
audio cannot be called back and does reach the speaker (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from voiced.audio import make_room_for_count
from voiced.audio.convert import Framer, FromWire, ToWire, frame_bytes
from voiced.config import AudioEndpointSettings
from voiced.errors import AudioDeviceError, ConfigError
from voiced.threads import thread_namer
from voiced.wakeup import Wakeup
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

logger = logging.getLogger(__name__)

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


class PyAudioSource:
    """A microphone through PortAudio, converted to 24 kHz mono frames.

    Args:
        settings: ``audio.input``.
        frame_ms: frame size handed to the session.
        block_ms: audio each callback reads and hands to the loop at once (a multiple of
            ``frame_ms``; the frame filter still sees one frame at a time). Defaults to
            ``frame_ms``.
    """

    def __init__(self, settings: AudioEndpointSettings, *, frame_ms: int = 20,
                 block_ms: int | None = None) -> None:
        self.settings = settings
        self.frame_ms = frame_ms
        self.block_ms = block_ms or frame_ms
        self._pa: Any = None
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._frames: deque[bytes] = deque(maxlen=_QUEUE_FRAMES)
        self._arrived = Wakeup()
        # one per open stream: a callback's hand-over still queued on the loop when the
        # stream was closed must not leak old audio into the next one
        self._generation = 0
        self._last_callback = 0.0
        self._last_drop_warning = -_WARN_EVERY_S
        # set_capturing(): whether the stream should run; stopped, it costs nothing
        self._capture = True
        self._control = threading.Lock()  # one start, stop or close of the stream at a time
        self._failed: str | None = None  # a restart that failed, for read() to raise
        self.device: DeviceInfo | None = None
        self.rate = 0
        self.dropped_frames = 0
        self.overflows = 0
        # issue 22: the echo canceller, on PortAudio's thread as each frame is read (the
        # speaker's position is read then); voiced/audio/pipeline.py installs it
        self.frame_filter: Callable[[bytes], bytes] | None = None
        self.adc_time = 0.0
        """PortAudio's capture time of the end of the frame ``frame_filter`` is given (0:
        the host API does not say); PortAudio's stream clock, as the sink's ``dac_time``."""

    async def start(self) -> None:
        """Select and open the device (24 kHz if it can, else its best rate)."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self._generation += 1
        generation = self._generation
        pa = self._pa = self._pa or open_portaudio()
        dev = self.device = select_device(pa, self.settings.device, is_input=True,
                                          key="audio.input.device")
        want_channel = self.settings.channel
        channels = 1 if want_channel is None else want_channel + 1
        if channels > dev.max_input_channels:
            raise ConfigError([("audio.input.channel",
                                f"device \"{dev.name}\" has {dev.max_input_channels} "
                                f"input channel(s); channel {want_channel} does not exist")])
        probe = (self.settings.rate_hz,) if self.settings.rate_hz else PROBE_RATES
        rates = supported_rates(pa, dev, is_input=True, channels=channels, rates=probe)
        if not rates and channels == 1 and dev.max_input_channels >= 2:
            channels = 2  # some USB mics open only in stereo
            rates = supported_rates(pa, dev, is_input=True, channels=2, rates=probe)
        if not rates and self.settings.rate_hz:
            raise ConfigError([("audio.input.rate_hz", f"device \"{dev.name}\" does not "
                                f"accept {self.settings.rate_hz} Hz")])
        rate = rates[0] if rates else dev.default_rate
        self.rate = rate
        conv = ToWire(rate, channels, want_channel)
        framer = Framer(frame_bytes(self.frame_ms))
        pyaudio = _pyaudio()
        overflow_flag = pyaudio.paInputOverflow
        name_thread = thread_namer("voiced-mic")
        loop = self._loop
        assert loop is not None

        def callback(in_data: bytes | None, frame_count: int, time_info: Any,
                     status: int) -> tuple[None, int]:
            # NOTE: runs on PortAudio's thread; the only crossing is call_soon_threadsafe
            name_thread()
            if status & overflow_flag:
                self.overflows += 1
            if in_data:
                frames = framer.push(conv.convert(in_data))
                if frames and self.frame_filter is not None:  # issue 22
                    frames = self._filter(frames, framer, frame_count, rate, time_info)
                if frames:
                    loop.call_soon_threadsafe(self._deliver, frames, generation)
            return None, pyaudio.paContinue

        try:
            with self._control:
                self._failed = None
                self._stream = pa.open(format=pyaudio.paInt16, channels=channels, rate=rate,
                                       input=True, input_device_index=dev.index,
                                       # one callback per block: its frames cross
                                       # to the loop together (issue 21: fewer wakeups)
                                       frames_per_buffer=rate * self.block_ms // 1000,
                                       stream_callback=callback, start=self._capture)
        except OSError as e:
            raise AudioDeviceError(_explain_open_error(e, dev, "input")) from e
        self._last_callback = time.monotonic()
        logger.info("microphone: %d \"%s\" at %d Hz, %d channel(s)%s", dev.index, dev.name,
                    rate, channels, "" if rate == SAMPLE_RATE else ", resampled to 24 kHz")

    def _filter(self, frames: list[bytes], framer: Framer, frame_count: int, rate: int,
                time_info: Any) -> list[bytes]:
        """``frame_filter`` on each frame, ``adc_time`` set to when the frame ended.

        The echo canceller pairs each mic frame with the speaker sound playing when it
        was captured: PortAudio's timestamps say when, where reading the speaker's count
        at this callback would add however late the callback runs (measured: 160-280 ms
        of wander on a busy machine; docs/architecture.md, "Echo cancellation").
        """
        assert self.frame_filter is not None
        adc = float(time_info.get("input_buffer_adc_time", 0.0)) if time_info else 0.0
        # the last frame ends where this buffer ends, less what the framer still holds
        end = (adc + frame_count / rate - framer.pending_samples() / SAMPLE_RATE
               if adc > 0 else 0.0)
        out = []
        for i, f in enumerate(frames):
            back = (len(frames) - 1 - i) * len(f) // BYTES_PER_SAMPLE / SAMPLE_RATE
            self.adc_time = end - back if end > 0 else 0.0
            out.append(self.frame_filter(f))
        return out

    def _deliver(self, frames: list[bytes], generation: int) -> None:
        if generation != self._generation or not self._capture:
            return  # from a stream closed or stopped since: that audio is gone with it
        self._last_callback = time.monotonic()
        for f in frames:
            if len(self._frames) == self._frames.maxlen:
                self.dropped_frames += 1
                now = time.monotonic()
                if now - self._last_drop_warning >= _WARN_EVERY_S:
                    self._last_drop_warning = now
                    logger.warning("microphone frames dropped (%d so far): the event loop "
                                   "is falling behind", self.dropped_frames)
            self._frames.append(f)
        self._arrived.set()

    def mic_opened(self) -> None:
        """Nothing to do: :meth:`set_capturing` runs the stream."""

    @property
    def capturing(self) -> bool:
        """Whether the stream is meant to run (:meth:`set_capturing`)."""
        return self._capture

    def set_capturing(self, on: bool) -> None:
        """Run the stream, or stop it without closing it (on the loop; never blocks).

        Stopped, no callback reaches Python (issue 21: idle at zero) and :meth:`read`
        waits without taking the silence for a fault. Starting a stopped stream is one
        Pa_StartStream on a worker thread, not a new PortAudio instance: the first frame
        follows one period later. A restart that fails shows as :meth:`read` raising
        ``AudioDeviceError``, the way a mic that fails while running does.
        """
        if on == self._capture:
            return
        self._capture = on
        self._frames.clear()
        self._last_callback = time.monotonic()  # the silence check counts from here
        loop = self._loop
        if loop is not None and self._stream is not None:
            loop.run_in_executor(None, self._apply_capture, loop)
        self._arrived.set()

    def _apply_capture(self, loop: asyncio.AbstractEventLoop) -> None:
        # NOTE: a worker thread: Pa_StartStream/Pa_StopStream block for a period or so.
        # It reads the wish when it runs, so quick on/off/on requests end as the last one.
        with self._control:
            stream, want = self._stream, self._capture
            if stream is None:
                return
            try:
                if want:
                    stream.start_stream()
                else:
                    stream.stop_stream()
            except OSError as e:
                name = self.device.name if self.device else "?"
                verb = "start" if want else "stop"
                self._failed = f"microphone \"{name}\" cannot {verb}: {e}"
                loop.call_soon_threadsafe(self._arrived.set)

    async def read(self) -> bytes:
        """The next frame.

        Raises:
            AudioDeviceError: no audio arrived for 2 s (the mic was unplugged or failed).
        """
        while not self._frames:
            if self._stream is None:
                raise AudioDeviceError("microphone is closed")
            if self._failed is not None:
                why, self._failed = self._failed, None
                raise AudioDeviceError(why)
            if not self._capture:
                await self._arrived.wait()  # stopped on purpose: its silence is no fault
                continue
            await self._arrived.wait(_MIC_SILENCE_S)
            if (not self._frames and self._capture
                    and time.monotonic() - self._last_callback >= _MIC_SILENCE_S):
                name = self.device.name if self.device else "?"
                raise AudioDeviceError(f"microphone \"{name}\" delivers no audio "
                                       "(unplugged or failed)")
        return self._frames.popleft()

    async def aclose(self) -> None:
        """Stop and close the stream and PortAudio."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._generation += 1
        with self._control:
            _release(self._stream, self._pa, "microphone")
            self._stream = self._pa = None
        self._frames.clear()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._arrived.set)  # a waiting read() sees it


class PyAudioSink:
    """A speaker through PortAudio with a jitter buffer and a played-position count.

    Args:
        settings: ``audio.output``.
        period_ms: PortAudio buffer size; a stop takes effect within one period.
        jitter_ms: audio buffered before a reply starts to play (absorbs network jitter).
        max_queued_s: audio queued at most (at the device's rate and channels: 120 s at
            48 kHz stereo is 23 MB); :meth:`play` refuses what would go beyond.
        idle_s: the stream stops this long after the last audio was handed out (or a
            stop), and starts again on the next :meth:`play`; None: it runs for good.
        start_margin_ms: a reply (or audio after a drain) starts to play this long after
            its first audio came at the earliest, even when ``jitter_ms`` of it is queued
            at once: audio that keeps arriving at real-time pace then always finds this
            much still queued (without it, a first 100 ms chunk started at once and the
            next, a little late, found the buffer dry: a gap).
    """

    def __init__(self, settings: AudioEndpointSettings, *, period_ms: int = 20,
                 jitter_ms: int = 80, max_queued_s: float = 120.0,
                 idle_s: float | None = 2.0, start_margin_ms: int = 60) -> None:
        self.settings = settings
        self.period_ms = period_ms
        self.jitter_ms = jitter_ms
        self.max_queued_s = max_queued_s
        self.idle_s = idle_s
        self.start_margin_ms = start_margin_ms
        self._prime_since = 0.0  # when the audio now priming came (monotonic)
        # the stream is stopped while idle (issue 21): _running is the wish (the loop's),
        # _started what the worker thread last did; _control orders starts, stops, closes
        self._running = False
        self._started = False
        self._control = threading.Lock()
        self._failed: str | None = None  # a restart that failed, for check() to raise
        self._idle_timer: asyncio.TimerHandle | None = None
        self._pa: Any = None
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        # queue of [item_id, device-rate bytes, offset]
        self._queue: deque[list[Any]] = deque()
        self._queued_bytes = 0
        # device frames handed to PortAudio per item, kept across underruns (an item that
        # ran dry and resumed is still one item) for the KEEP_PLAYED_COUNTS newest items
        self._handed: dict[str, int] = {}
        self._last_item: str | None = None  # the item play() converted last
        self._arrived: dict[str, float] = {}  # when an item's first audio was queued
        # seconds from an item's first play() to its first sample reaching PortAudio
        # (jitter buffer + wait for the next period); for status and bench/
        self.start_latencies: deque[float] = deque(maxlen=100)
        self._latency_frames = 0
        self._priming = True
        self._conv: FromWire | None = None
        self._on_drained: Callable[[], None] = lambda: None
        self.device: DeviceInfo | None = None
        self.rate = SAMPLE_RATE
        self.channels = 1
        # issue 22: earcons mixed in and the echo canceller's reference taken, on
        # PortAudio's thread, from what each period really hands the device
        self.output_filter: Callable[[bytes], bytes] | None = None
        self.dac_time = 0.0
        """PortAudio's time at which the first sample of the period ``output_filter`` is
        given will play (0: the host API does not say)."""

    def set_drained_callback(self, callback: Callable[[], None]) -> None:
        """Called on the loop when everything queued has been handed to the device."""
        self._on_drained = callback

    async def start(self) -> None:
        """Select and open the output device."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        pa = self._pa = self._pa or open_portaudio()
        dev = self.device = select_device(pa, self.settings.device, is_input=False,
                                          key="audio.output.device")
        channels = 1
        probe = (self.settings.rate_hz,) if self.settings.rate_hz else PROBE_RATES
        rates = supported_rates(pa, dev, is_input=False, channels=1, rates=probe)
        if not rates and dev.max_output_channels >= 2:
            channels = 2
            rates = supported_rates(pa, dev, is_input=False, channels=2, rates=probe)
        if not rates and self.settings.rate_hz:
            raise ConfigError([("audio.output.rate_hz", f"device \"{dev.name}\" does not "
                                f"accept {self.settings.rate_hz} Hz")])
        self.rate = rates[0] if rates else dev.default_rate
        self.channels = channels
        with self._lock:  # nothing from before (a play() racing the last close) carries over
            self._forget_queue()
        self._conv = FromWire(self.rate, channels)
        pyaudio = _pyaudio()
        loop = self._loop
        assert loop is not None
        period = self.rate * self.period_ms // 1000
        frame_b = BYTES_PER_SAMPLE * channels
        name_thread = thread_namer("voiced-speaker")
        jitter_bytes = self.rate * self.jitter_ms // 1000 * frame_b
        jitter_s = self.jitter_ms / 1000
        margin_s = min(self.start_margin_ms, self.jitter_ms) / 1000

        def callback(in_data: bytes | None, frame_count: int, time_info: Any,
                     status: int) -> tuple[bytes, int]:
            # NOTE: PortAudio's thread. Pull from the jitter buffer, pad with silence.
            name_thread()
            want = frame_count * frame_b
            out = bytearray()
            drained = False
            with self._lock:
                if self._priming and self._queue:
                    # by time, not by frames asked: a stream just started asks for
                    # several periods at once to fill the device
                    waited = time.monotonic() - self._prime_since
                    if ((self._queued_bytes >= jitter_bytes and waited >= margin_s)
                            or waited >= jitter_s):
                        self._priming = False
                if not self._priming:
                    had = bool(self._queue)
                    while self._queue and len(out) < want:
                        entry = self._queue[0]
                        item_id, data, off = entry
                        take = data[off:off + want - len(out)]
                        out += take
                        entry[2] += len(take)
                        self._queued_bytes -= len(take)
                        if item_id in self._arrived:
                            self.start_latencies.append(
                                time.monotonic() - self._arrived.pop(item_id))
                        self._handed[item_id] = self._handed.get(item_id, 0) + len(
                            take) // frame_b
                        if entry[2] >= len(data):
                            self._queue.popleft()
                    if had and not self._queue:
                        # dry: tell the loop, and buffer jitter_ms again before resuming
                        drained = True
                        self._priming = True
            if len(out) < want:
                out += bytes(want - len(out))
            if drained:
                loop.call_soon_threadsafe(self._drained)
            if self.output_filter is not None:  # issue 22
                self.dac_time = (float(time_info.get("output_buffer_dac_time", 0.0))
                                 if time_info else 0.0)
                return self.output_filter(bytes(out)), pyaudio.paContinue
            return bytes(out), pyaudio.paContinue

        run = self.idle_s is None  # else the first play() starts it
        try:
            with self._control:
                self._failed = None
                self._stream = pa.open(format=pyaudio.paInt16, channels=channels,
                                       rate=self.rate, output=True,
                                       output_device_index=dev.index,
                                       frames_per_buffer=period, stream_callback=callback,
                                       start=run)
                self._running = self._started = run
        except OSError as e:
            raise AudioDeviceError(_explain_open_error(e, dev, "output")) from e
        self._latency_frames = int(self._stream.get_output_latency() * self.rate)
        logger.info("speaker: %d \"%s\" at %d Hz, %d channel(s), latency %.0f ms", dev.index,
                    dev.name, self.rate, channels, self._stream.get_output_latency() * 1000)

    def _forget_queue(self) -> None:
        """Drop queued audio and played counts; buffer jitter_ms again. Hold the lock."""
        self._queue.clear()
        self._queued_bytes = 0
        self._handed.clear()
        self._priming = True

    def _drained(self) -> None:
        with self._lock:
            if self._queue:  # refilled since the callback ran dry: that drain is over
                return
        self._idle_later()
        self._on_drained()

    @property
    def running(self) -> bool:
        """Whether the stream is meant to run (it stops ``idle_s`` after playback)."""
        return self._running

    def _idle_later(self) -> None:
        """Stop the stream ``idle_s`` from now unless audio comes first (on the loop)."""
        loop = self._loop
        if self.idle_s is None or loop is None:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = loop.call_later(self.idle_s, self._go_idle)

    def keep_awake(self, seconds: float) -> None:
        """Run the stream for at least ``seconds`` more (on the loop).

        For audio mixed in beside the queue (earcons, voiced/audio/pipeline.py): it never
        passes through :meth:`play`, so nothing else would start a stream stopped while
        idle.
        """
        loop = self._loop
        if self.idle_s is None or loop is None:
            return
        self._set_running(True)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = loop.call_later(seconds + self.idle_s, self._go_idle)

    def _go_idle(self) -> None:
        self._idle_timer = None
        with self._lock:
            if self._queue:
                return
        # the callback has played silence for idle_s: stopping here cannot click
        self._set_running(False)

    def _set_running(self, on: bool) -> None:
        if on == self._running or self._stream is None or self._loop is None:
            return
        self._running = on
        self._loop.run_in_executor(None, self._apply_running)

    def _apply_running(self) -> None:
        # NOTE: a worker thread: Pa_StartStream/Pa_StopStream block (a stop lets the
        # device play out what it holds: silence). It does the wish as it is when it runs.
        with self._control:
            stream, want = self._stream, self._running
            if stream is None or want == self._started:
                return
            try:
                if want:
                    stream.start_stream()
                else:
                    stream.stop_stream()
                self._started = want
            except OSError as e:
                name = self.device.name if self.device else "?"
                verb = "start" if want else "stop"
                self._failed = f"speaker \"{name}\" cannot {verb}: {e}"

    def play(self, pcm: bytes, item_id: str) -> int:
        """Queue reply audio (converted to the device's rate here, on the loop).

        Returns the bytes of ``pcm`` queued: fewer when ``max_queued_s`` would be passed.
        While the speaker is closed (a device fault) the audio is dropped, and counted as
        taken: the session sends none then, and audio kept would play late, in the old
        device's format.
        """
        conv = self._conv
        if not pcm or conv is None:
            return len(pcm)
        frame_b = BYTES_PER_SAMPLE * self.channels
        with self._lock:
            room = int(self.max_queued_s * self.rate) * frame_b - self._queued_bytes
        # device bytes per wire sample: rate/24k device frames of frame_b bytes each
        room_samples = max(0, int(room * SAMPLE_RATE / self.rate / frame_b))
        take = min(len(pcm) // BYTES_PER_SAMPLE, room_samples) * BYTES_PER_SAMPLE
        if not take:
            return 0
        if take < len(pcm):
            pcm = pcm[:take]
        tail, previous = b"", self._last_item
        if item_id != previous:
            # the resampler still holds the end of the previous item: flush it after that
            # item, rather than at the start of this one
            tail = conv.convert(b"", last=True)
            conv.reset()
            self._last_item = item_id
        data = conv.convert(pcm)
        with self._lock:
            if self._priming and not self._queue:
                self._prime_since = time.monotonic()
            if tail and self._queue and self._queue[-1][0] == previous:
                self._queue.append([previous, tail, 0])
                self._queued_bytes += len(tail)
            if item_id not in self._handed:
                self._arrived.setdefault(item_id, time.monotonic())
                make_room_for_count(self._handed)
            self._queue.append([item_id, data, 0])
            self._queued_bytes += len(data)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if not self._running:
            # the jitter buffer fills while it starts: the callback plays silence until
            # jitter_ms is queued, so the start is hidden in it and cannot click
            self._set_running(True)
        return take

    @property
    def queued_s(self) -> float:
        """Seconds of audio queued and not yet handed to PortAudio."""
        return self._queued_bytes / (BYTES_PER_SAMPLE * self.channels * self.rate)

    def stop(self) -> Mapping[str, int]:
        """Drop the queue now; return 24 kHz samples the user hears of each item.

        That is everything handed to PortAudio: the next callback plays silence, but what
        is already in the device's buffers still plays out (the speaker goes quiet one
        output latency later). Measured on a PulseAudio null sink: the audio that
        reached the sink equals the handed count to the sample (bench/audio_bench.py).
        """
        with self._lock:
            pending = {entry[0] for entry in self._queue}
            handed = dict(self._handed)
            self._forget_queue()
            self._arrived.clear()
        if self._conv is not None:
            self._conv.reset()
        self._last_item = None
        self._idle_later()
        ratio = SAMPLE_RATE / self.rate
        out = {}
        for item_id in pending | set(handed):
            out[item_id] = int(handed.get(item_id, 0) * ratio)
        return out

    def check(self) -> None:
        """Raise ``AudioDeviceError`` when PortAudio stopped the stream by itself.

        That is how a USB speaker pulled out shows: the host API ends the callback
        thread and the stream goes inactive.
        """
        if self._failed is not None:
            why, self._failed = self._failed, None
            raise AudioDeviceError(why)
        stream = self._stream
        # a stream stopped on purpose (idle) is not a fault; one being started not yet
        if (stream is not None and self._running and self._started
                and not stream.is_active()):
            name = self.device.name if self.device else "?"
            raise AudioDeviceError(f"speaker \"{name}\" stopped (unplugged or failed)")

    async def aclose(self) -> None:
        """Stop and close the stream and PortAudio."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._control:
            stream, self._stream = self._stream, None
            self._running = self._started = False
        self._conv = None  # play() drops audio until a stream is open again
        self._last_item = None
        with self._lock:
            self._forget_queue()
        _release(stream, self._pa, "speaker")
        self._pa = None
