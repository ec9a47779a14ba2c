"""The audio keeper: the mic pump, and the recovery of audio devices that fail.

A mic that delivers nothing for 2 s, or a speaker stream that PortAudio stopped, is a
device fault. The mic pump and a once-a-second speaker check report it to one task that
interrupts playback, shows ``error``, closes both devices and retries opening both, with
a backoff; a change in /dev/snd (a USB card plugged back in) brings a retry forward.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from voiced import guard
from voiced.audio import AudioSink, AudioSource, PushSource
from voiced.backoff import Backoff
from voiced.config import AudioSettings
from voiced.errors import AudioDeviceError, ConfigError
from voiced.supervisor.ports import Core

logger = logging.getLogger("voiced.supervisor")  # the package logs as one

SOUND_DIR = Path("/dev/snd")


def sound_cards() -> frozenset[str]:
    """The ALSA device nodes present (empty where there are none, as in a container)."""
    try:
        return frozenset(os.listdir(SOUND_DIR))
    except OSError:
        return frozenset()


class AudioKeeper:
    """Reads the mic into the core; reopens mic and speaker after a fault.

    Args:
        source, sink: the audio devices.
        settings: the audio settings (``reopen_s``, ``reopen_max_s``).
        session: the conversation core.
        feed: gives the core one input and applies its effects (the supervisor's).
        apply: applies the effects the core has produced (the supervisor's).
        on_frame: what to do with one mic frame (the VAD, then the core).
        now: the loop's monotonic clock.
        reopened: told once both devices are open again (a new echo path).
    """

    def __init__(self, source: AudioSource, sink: AudioSink, settings: AudioSettings,
                 session: Core, feed: Callable[..., None], apply: Callable[[], None],
                 on_frame: Callable[[bytes], None], now: Callable[[], float], *,
                 reopened: Callable[[], None] = lambda: None) -> None:
        self.source = source
        self.sink = sink
        self.settings = settings
        self.session = session
        self._feed = feed
        self._apply = apply
        self._on_frame = on_frame
        self._now = now
        self._reopened = reopened
        self.ok = asyncio.Event()
        self.ok.set()
        self._generation = 0  # bumped on every reopen; stale errors are ignored
        self._faults: asyncio.Queue[str] = asyncio.Queue()
        self.device_faults = 0

    def fault(self, reason: str) -> None:
        """A device failed (at start-up, say): the watch task reopens both."""
        self._pause()
        self._faults.put_nowait(reason)

    def _pause(self) -> None:
        """No mic frames into the core until the devices are open again."""
        self.ok.clear()
        if isinstance(self.source, PushSource):
            self.source.listener = None  # frames queue for read() meanwhile

    def _take(self, frame: bytes) -> None:
        self._feed("mic", self._on_frame, frame)

    async def mic_pump(self) -> None:
        """Read mic frames for good, reporting a failed mic to the watch task.

        A source that can push (``PushSource``) gives its frames to the core in its
        hand-over to the loop; ``read()`` then only waits for a fault (and returns the
        frames queued while the devices were being reopened). *Why:* reading woke this
        task once per mic block, a loop turn of its own between the hand-over and the
        sender's (issue 21).
        """
        while True:
            await self.ok.wait()
            generation = self._generation
            if isinstance(self.source, PushSource):
                self.source.listener = self._take
            try:
                frame = await self.source.read()
            except AudioDeviceError as e:
                # an error from a source that was already replaced is old news
                if generation == self._generation and self.ok.is_set():
                    self.fault(str(e))
                continue
            self._feed("mic", self._on_frame, frame)

    async def watch(self) -> None:
        """Check the speaker every second; reopen the audio devices when one fails."""
        while True:
            try:
                reason = await asyncio.wait_for(self._faults.get(), 1.0)
            except TimeoutError:
                try:
                    self.sink.check()
                    continue
                except AudioDeviceError as e:
                    reason = str(e)
            with guard.contain("audio watch", logger):
                await self._reopen(reason)

    async def _reopen(self, reason: str) -> None:
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
        self._pause()
        self.device_faults += 1
        a = self.settings
        backoff = Backoff(a.reopen_s, a.reopen_max_s, jitter=False)
        logger.error("audio device failed: %s; reopening after %g s, then less and less "
                     "often (up to every %g s)", reason, a.reopen_s, a.reopen_max_s)
        self.session.on_interrupt(self._now())  # what was queued is lost with the device
        self._apply()
        self.session.on_device_fault(f"{reason}; retrying")
        self._apply()
        while True:
            for closer in (self.source.aclose, self.sink.aclose):
                try:
                    await closer()
                except Exception as e:  # noqa: BLE001 - a dead device may fail to close
                    logger.debug("closing a failed audio device: %s", e)
            await self.wait_for_sound_cards(backoff.next(), step=a.reopen_s)
            try:
                await self.source.start()
                await self.sink.start()
            except (AudioDeviceError, ConfigError) as e:
                why = "; ".join(e.lines()) if isinstance(e, ConfigError) else str(e)
                logger.log(logging.WARNING if backoff.attempts == 1 else logging.DEBUG,
                           "audio devices still unavailable (attempt %d): %s",
                           backoff.attempts, why)
                continue
            break
        self._generation += 1
        self.ok.set()
        self._reopened()
        logger.info("audio devices open again after %d attempt(s)", backoff.attempts)
        self.session.on_device_restored()
        self._apply()

    async def wait_for_sound_cards(self, seconds: float, *, step: float) -> None:
        """Sleep ``seconds``, but return early once the sound cards in /dev/snd change."""
        before = sound_cards()
        end = self._now() + seconds
        while (left := end - self._now()) > 0:
            await asyncio.sleep(min(step, left))
            if sound_cards() != before:
                logger.info("sound cards changed; trying the audio devices now")
                return
