"""The ``file`` audio backend: a WAV as the microphone, a WAV as the speaker.

Both run at real-time pace on the event loop clock, so the whole pipeline (pacing, echo
policy, barge-in, played position) behaves as with a sound card. A position in the output
WAV is a position in time since the daemon started: silence is written too.
"""

from __future__ import annotations

import asyncio
import logging
import wave
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from voiced.audio import make_room_for_count
from voiced.audio.convert import ToWire, frame_bytes, to_int16
from voiced.errors import AudioDeviceError
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

logger = logging.getLogger(__name__)


def read_wav_as_wire(path: Path, *, channel: int | None = None,
                     chunk_frames: int = 4096) -> bytes:
    """Read a WAV of any rate/channels and convert it as a mic stream would be.

    The conversion runs chunk by chunk through the same streaming converter the PyAudio
    backend uses, so tests compare like with like.

    Raises:
        AudioDeviceError: the file is missing or not a PCM WAV.
    """
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            conv = ToWire(rate, channels, channel)
            out = bytearray()
            while True:
                raw = w.readframes(chunk_frames)
                last = len(raw) < chunk_frames * channels * width
                out += conv.convert(to_int16(raw, width), last=last)
                if last:
                    return bytes(out)
    except (OSError, EOFError, wave.Error, ValueError) as e:
        raise AudioDeviceError(f"cannot read WAV {path}: {e}") from e


class WavFileSource:
    """Reads a WAV as if it were a microphone: paced frames, then silence.

    Args:
        path: the WAV (any rate, channels, 8-32 bit).
        frame_ms: frame size.
        starts_on_mic: play the WAV from the start each time the mic is switched on
            (a person speaking after pressing); otherwise from :meth:`start`.
        channel: the channel to keep; None averages.
        speed: pacing factor (1.0 real time; tests may go faster).
    """

    def __init__(self, path: Path, *, frame_ms: int = 20, starts_on_mic: bool = True,
                 channel: int | None = None, speed: float = 1.0) -> None:
        self.path = path
        self.frame_ms = frame_ms
        self.starts_on_mic = starts_on_mic
        self.channel = channel
        self.speed = speed
        self._frame_bytes = frame_bytes(frame_ms)
        self._pcm = b""
        self._pos: int | None = None  # byte offset into the WAV, None: silence
        self._t0 = 0.0
        self._n = 0
        self.frames_read = 0

    async def start(self) -> None:
        """Load and convert the WAV; start the clock."""
        self._pcm = read_wav_as_wire(self.path, channel=self.channel)
        logger.info("file mic: %s (%.2f s at 24 kHz)", self.path,
                    len(self._pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE)
        self._pos = None if self.starts_on_mic else 0
        self._t0 = asyncio.get_running_loop().time()
        self._n = 0

    def mic_opened(self) -> None:
        """Start the WAV from its beginning (when it starts on mic)."""
        if self.starts_on_mic:
            self._pos = 0

    def set_capturing(self, on: bool) -> None:
        """Nothing to do: a WAV costs nothing while it is not read."""

    async def read(self) -> bytes:
        """Wait until the next frame is due, then return it (silence after the end)."""
        loop = asyncio.get_running_loop()
        due = self._t0 + self._n * self.frame_ms / 1000 / self.speed
        self._n += 1
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.frames_read += 1
        fb = self._frame_bytes
        if self._pos is None or self._pos >= len(self._pcm):
            self._pos = None
            return bytes(fb)
        chunk = self._pcm[self._pos:self._pos + fb]
        self._pos += fb
        return chunk + bytes(fb - len(chunk))

    async def aclose(self) -> None:
        """Nothing to release."""


class WavFileSink:
    """Writes everything the speaker would play, silence included, to a 24 kHz WAV.

    A tick every ``frame_ms`` writes the frames due since the start: queued reply audio
    where there is some, silence where there is none. The played position of each item
    is the number of its samples written, exactly as a device that consumed them. At most
    ``max_queued_s`` of audio waits in the queue.
    """

    def __init__(self, path: Path, *, frame_ms: int = 20, speed: float = 1.0,
                 max_queued_s: float = 120.0) -> None:
        self.path = path
        self.frame_ms = frame_ms
        self.speed = speed
        self._frame_samples = SAMPLE_RATE * frame_ms // 1000
        self._queue: deque[tuple[str, bytes]] = deque()
        self._head_offset = 0  # bytes of the first queue entry already written
        self._queued_bytes = 0  # not yet written
        self._max_queued_bytes = int(max_queued_s * SAMPLE_RATE) * BYTES_PER_SAMPLE
        self._played: dict[str, int] = {}
        self._wav: wave.Wave_write | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_drained: Callable[[], None] = lambda: None
        self.samples_written = 0
        self.output_filter: Callable[[bytes], bytes] | None = None  # issue 22: earcons

    def set_drained_callback(self, callback: Callable[[], None]) -> None:
        """Set what to call (on the loop) when the queue runs empty after playing."""
        self._on_drained = callback

    async def start(self) -> None:
        """Create the WAV and start writing at real-time pace."""
        try:
            w = wave.open(str(self.path), "wb")
            w.setnchannels(1)
            w.setsampwidth(BYTES_PER_SAMPLE)
            w.setframerate(SAMPLE_RATE)
        except OSError as e:
            raise AudioDeviceError(f"cannot write WAV {self.path}: {e}") from e
        self._wav = w
        self._task = asyncio.get_running_loop().create_task(self._run(), name="file-speaker")
        logger.info("file speaker: %s", self.path)

    def play(self, pcm: bytes, item_id: str) -> int:
        """Queue reply audio, as much as ``max_queued_s`` allows; returns the bytes taken."""
        room = max(0, self._max_queued_bytes - self._queued_bytes)
        take = min(len(pcm), room) // BYTES_PER_SAMPLE * BYTES_PER_SAMPLE
        if take:
            self._queue.append((item_id, pcm if take == len(pcm) else pcm[:take]))
            self._queued_bytes += take
        return take

    @property
    def queued_s(self) -> float:
        """Seconds of audio queued and not yet written."""
        return self._queued_bytes / BYTES_PER_SAMPLE / SAMPLE_RATE

    def stop(self) -> Mapping[str, int]:
        """Drop the queue; return samples written of each item that was still queued."""
        pending = {item_id: self._played.get(item_id, 0) for item_id, _ in self._queue}
        self._queue.clear()
        self._queued_bytes = 0
        self._head_offset = 0
        self._played = {k: v for k, v in self._played.items() if k in pending}
        return pending

    def check(self) -> None:
        """Raise ``AudioDeviceError`` if writing the WAV failed (e.g. the disk is full)."""
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            err = task.exception()
            raise AudioDeviceError(f"file speaker {self.path} stopped: {err}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        period = self.frame_ms / 1000 / self.speed
        frames_done = 0
        while True:
            due = int((loop.time() - t0) / period) + 1
            while frames_done < due:
                self._write_frame()
                frames_done += 1
            await asyncio.sleep(t0 + frames_done * period - loop.time())

    def _write_frame(self) -> None:
        want = self._frame_samples * BYTES_PER_SAMPLE
        out = bytearray()
        had_audio = bool(self._queue)
        while self._queue and len(out) < want:
            item_id, pcm = self._queue[0]
            take = pcm[self._head_offset:self._head_offset + want - len(out)]
            out += take
            if item_id not in self._played:
                make_room_for_count(self._played)
            self._played[item_id] = self._played.get(item_id, 0) + len(take) // BYTES_PER_SAMPLE
            self._head_offset += len(take)
            self._queued_bytes -= len(take)
            if self._head_offset >= len(pcm):
                self._queue.popleft()
                self._head_offset = 0
        if len(out) < want:
            out += bytes(want - len(out))
        assert self._wav is not None
        if self.output_filter is not None:  # issue 22
            out = bytearray(self.output_filter(bytes(out)))
        self._wav.writeframes(bytes(out))
        self.samples_written += self._frame_samples
        if had_audio and not self._queue:
            # counts stay: an item that ran dry mid-reply (the network fell behind) and
            # resumes is still one item, and a barge-in must count all of it
            self._on_drained()

    async def aclose(self) -> None:
        """Stop writing and finish the WAV header."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._wav is not None:
            self._wav.close()
            self._wav = None
