"""The ``pyaudio`` backend's microphone: one PortAudio input stream.

Its callback converts each block and hands the block's frames to the event loop in one
crossing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from voiced.audio.convert import Framer, ToWire, frame_bytes
from voiced.audio.portaudio import (
    _MIC_SILENCE_S,
    _QUEUE_FRAMES,
    _WARN_EVERY_S,
    PROBE_RATES,
    DeviceInfo,
    _explain_open_error,
    _pyaudio,
    _release,
    open_portaudio,
    select_device,
    supported_rates,
)
from voiced.config import AudioEndpointSettings
from voiced.errors import AudioDeviceError, ConfigError
from voiced.threads import CallbackThread
from voiced.wakeup import Wakeup
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

logger = logging.getLogger("voiced.audio.pyaudio_backend")

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
        # set_capturing(): whether the stream should run; parked (closed), it costs nothing
        self._capture = True
        self._control = threading.Lock()  # one start, stop or close of the stream at a time
        self._failed: str | None = None  # a reopen that failed, for read() to raise
        self._channels = 1  # what _open chose, for each stream opened after a park
        self.callback_thread = CallbackThread("voiced-mic")
        self.device: DeviceInfo | None = None
        self.rate = 0
        self.dropped_frames = 0
        self.overflows = 0
        # issue 22: the echo canceller, on PortAudio's thread as each frame is read (the
        # speaker's position is read then); voiced/audio/pipeline.py installs it
        self.frame_filter: Callable[[bytes], bytes] | None = None
        self.listener: Callable[[bytes], None] | None = None
        """Given each frame on the loop, in the hand-over itself, instead of queuing it for
        :meth:`read` (the audio keeper's mic pump; issue 21: one loop turn per block, not a
        hand-over and then a turn of a task woken by it). :meth:`read` then waits for
        faults only, and for frames queued while no listener was set."""
        self.adc_time = 0.0
        """PortAudio's capture time of the end of the frame ``frame_filter`` is given (0:
        the host API does not say); PortAudio's stream clock, as the sink's ``dac_time``."""

    async def start(self) -> None:
        """Select and open the device (24 kHz if it can, else its best rate)."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
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
        self._channels = channels
        with self._control:
            self._failed = None
            # opened either way: a device that cannot open is found now, not at a press
            self._stream = self._new_stream(start=self._capture)
            if not self._capture:
                self._park()
        logger.info("microphone: %d \"%s\" at %d Hz, %d channel(s)%s", dev.index, dev.name,
                    rate, channels, "" if rate == SAMPLE_RATE else ", resampled to 24 kHz")

    def _new_stream(self, *, start: bool) -> Any:
        """A stream on the device :meth:`_open` chose (``_control`` held).

        Each has its own converter, framer and generation: it is opened again after
        each park (:meth:`set_capturing`).

        Raises:
            AudioDeviceError: PortAudio could not open it (in words).
        """
        self._generation += 1
        generation = self._generation
        pa, dev, rate, channels = self._pa, self.device, self.rate, self._channels
        assert pa is not None and dev is not None
        conv = ToWire(rate, channels, self.settings.channel)
        framer = Framer(frame_bytes(self.frame_ms))
        pyaudio = _pyaudio()
        overflow_flag = pyaudio.paInputOverflow
        thread = self.callback_thread
        loop = self._loop
        assert loop is not None

        def callback(in_data: bytes | None, frame_count: int, time_info: Any,
                     status: int) -> tuple[None, int]:
            # NOTE: runs on PortAudio's thread; the only crossing is call_soon_threadsafe
            thread.enter()  # named, and its Python thread state kept (issue 21)
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
            stream = pa.open(format=pyaudio.paInt16, channels=channels, rate=rate,
                             input=True, input_device_index=dev.index,
                             # one callback per block: its frames cross to the loop
                             # together (issue 21: fewer wakeups)
                             frames_per_buffer=rate * self.block_ms // 1000,
                             stream_callback=callback, start=start)
        except OSError as e:
            raise AudioDeviceError(_explain_open_error(e, dev, "input")) from e
        self._last_callback = time.monotonic()
        return stream

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
        listener = self.listener
        if listener is not None and not self._frames:  # else after those queued, in order
            for f in frames:
                listener(f)
                if generation != self._generation or not self._capture:
                    return  # the frame turned the mic off (or closed it): the rest goes too
            return
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
        """Run the stream, or park it (on the loop; never blocks).

        Parked, the stream is closed (its PortAudio instance stays) and no callback
        reaches Python (issue 21: idle at zero); :meth:`read` waits without taking the
        silence for a fault. A stream that is only stopped is not enough: ALSA's pulse
        plugin prepares a stopped capture stream again, and its server then streams
        audio into the process until it is closed (docs/architecture.md, "Idle at
        zero"). Opening one again takes about as long as starting a stopped one. A
        reopen that fails shows as :meth:`read` raising ``AudioDeviceError``, the way a
        mic that fails while running does.
        """
        if on == self._capture:
            return
        self._capture = on
        self._frames.clear()
        self._last_callback = time.monotonic()  # the silence check counts from here
        loop = self._loop
        if loop is not None and self._pa is not None:
            loop.run_in_executor(None, self._apply_capture, loop)
        self._arrived.set()

    def _apply_capture(self, loop: asyncio.AbstractEventLoop) -> None:
        # NOTE: a worker thread: opening, starting and closing block for a period or so.
        # It reads the wish when it runs, so quick on/off/on requests end as the last one.
        with self._control:
            if self._pa is None:
                return  # closed for good meanwhile
            fault = None
            if self._capture:
                fault = self._resume()
            else:
                self._park()
            if fault is not None:
                self._failed = fault
                loop.call_soon_threadsafe(self._arrived.set)

    def _park(self) -> None:
        """Stop and close the stream, keeping PortAudio (``_control`` held)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._generation += 1  # its hand-overs still queued on the loop are dropped
        # PortAudio stays; a close that errs (the device went) is only logged: the next
        # press opens the device again, or says why not
        _release(stream, None, "microphone")
        self.callback_thread.release()  # the stream's thread has ended

    def _resume(self) -> str | None:
        """Open a new stream running; the fault in words, or None."""
        if self._stream is not None:
            return None  # never parked (an off and an on before this ran): it runs
        try:
            self._stream = self._new_stream(start=True)
        except AudioDeviceError as e:
            return str(e)
        return None

    async def read(self) -> bytes:
        """The next frame.

        Raises:
            AudioDeviceError: no audio arrived for 2 s (the mic was unplugged or failed).
        """
        while not self._frames:
            if self._pa is None:
                raise AudioDeviceError("microphone is closed")
            if self._failed is not None:
                why, self._failed = self._failed, None
                raise AudioDeviceError(why)
            if not self._capture:
                await self._arrived.wait()  # stopped on purpose: its silence is no fault
                continue
            # until 2 s after the last callback: a listener takes the frames, and the
            # hand-overs do not wake this wait (nor start and cancel its timer) each block
            left = _MIC_SILENCE_S - (time.monotonic() - self._last_callback)
            if left <= 0:
                name = self.device.name if self.device else "?"
                raise AudioDeviceError(f"microphone \"{name}\" delivers no audio "
                                       "(unplugged or failed)")
            await self._arrived.wait(left)
        return self._frames.popleft()

    async def aclose(self) -> None:
        """Stop and close the stream and PortAudio."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._generation += 1
        with self._control:
            _release(self._stream, self._pa, "microphone")
            self._stream = self._pa = None
        self.callback_thread.release()
        self._frames.clear()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._arrived.set)  # a waiting read() sees it


