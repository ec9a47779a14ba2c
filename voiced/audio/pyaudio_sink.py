"""The ``pyaudio`` backend's speaker: one PortAudio output stream.

Its callback pulls from a jitter buffer and counts what each reply item has handed to the
device (its *played* position).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from voiced.audio import make_room_for_count
from voiced.audio.convert import FromWire
from voiced.audio.portaudio import (
    PROBE_RATES,
    DeviceInfo,
    _explain_open_error,
    _pyaudio,
    _release,
    open_portaudio,
    select_device,
    supported_rates,
    switch_stream,
)
from voiced.config import AudioEndpointSettings
from voiced.errors import AudioDeviceError, ConfigError
from voiced.threads import CallbackThread
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

logger = logging.getLogger("voiced.audio.pyaudio_backend")

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
                 idle_s: float | None = 0.5, start_margin_ms: int = 60) -> None:
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
        self._held = False  # hold_awake(): no idle stop (the echo canceller's mic is on)
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
        self.callback_thread = CallbackThread("voiced-speaker")
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
        thread = self.callback_thread
        jitter_bytes = self.rate * self.jitter_ms // 1000 * frame_b
        jitter_s = self.jitter_ms / 1000
        margin_s = min(self.start_margin_ms, self.jitter_ms) / 1000

        def callback(in_data: bytes | None, frame_count: int, time_info: Any,
                     status: int) -> tuple[bytes, int]:
            # NOTE: PortAudio's thread. Pull from the jitter buffer, pad with silence.
            thread.enter()  # named, and its Python thread state kept (issue 21)
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

        run = self.idle_s is None or self._held  # else the first play() starts it
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

    def hold_awake(self, on: bool) -> None:
        """Keep the stream running while ``on``; idle as usual after (on the loop).

        Under ``audio.echo: aec`` while the mic listens: the canceller's reference must
        run through the silence between replies, and a restart is an echo path change.
        """
        self._held = on
        if on:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            self._set_running(True)
        else:
            with self._lock:
                busy = bool(self._queue)
            if not busy:
                self._idle_later()

    def _go_idle(self) -> None:
        self._idle_timer = None
        if self._held:
            return
        with self._lock:
            if self._queue:
                return
        if getattr(self.output_filter, "playing", False):
            # an earcon not all handed out yet: its stream started later than keep_awake
            # reckoned (a slow start; the shorter the grace, the likelier): wait, not cut
            self._idle_later()
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
            fault = switch_stream(stream, want, "speaker", self.device)
            if fault is None:
                self._started = want
            else:
                self._failed = fault
            if not want:
                self.callback_thread.release()  # the stopped stream's thread has ended

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
        self.callback_thread.release()

