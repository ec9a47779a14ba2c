"""What the simulated Live model hears: an energy VAD over the session's input audio.

10 ms frames; speech is an RMS above -40 dBFS. An utterance starts 300 ms before the
first loud frame (the frames before it are kept for that), and ends after 500 ms of
quiet or 30 s of speech. Positions are input milliseconds: the session's timeline.
"""

from __future__ import annotations

import asyncio
import math
import operator
from collections import deque

from voiced.sim.live_track import BYTES_PER_MS

_VAD_BYTES = 10 * BYTES_PER_MS
_SPEECH_LEVEL = 10 ** (-40 / 20) * 32768  # RMS of -40 dBFS
_PREFIX_MS = 300
_SILENCE_MS = 500  # quiet after speech that ends the user's turn
_MAX_UTTERANCE_MS = 30_000

Utterance = tuple[bytes, int, int]
"""The audio of what the user said, and where it starts and ends (input ms)."""


class Ears:
    """The input VAD: when the user talks, and the utterances they said."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._prefix: deque[bytes] = deque(maxlen=_PREFIX_MS // 10)
        self.speech_on: int | None = None  # ms where the user's speech started
        self._silence = 0
        self._utterance = bytearray()
        self.quiet = asyncio.Event()  # set while the user is not talking
        self.quiet.set()

    def feed(self, heard: bytes) -> tuple[bool, list[Utterance]]:
        """Input audio (silence where the model hears none).

        Whether speech started in it, and the utterances that ended.
        """
        started = False
        ended: list[Utterance] = []
        self._buf += heard
        while len(self._buf) >= _VAD_BYTES:
            chunk = bytes(self._buf[:_VAD_BYTES])
            del self._buf[:_VAD_BYTES]
            if self._frame(chunk, ended):
                started = True
        return started, ended

    def _frame(self, chunk: bytes, ended: list[Utterance]) -> bool:
        a = memoryview(chunk).cast("h")
        loud = math.sqrt(sum(map(operator.mul, a, a)) / len(a)) > _SPEECH_LEVEL
        pos_ms = self._pos // BYTES_PER_MS
        self._pos += len(chunk)
        if self.speech_on is None:
            self._prefix.append(chunk)
            if not loud:
                return False
            self.speech_on = max(0, pos_ms - _PREFIX_MS)
            self.quiet.clear()
            self._utterance = bytearray(b"".join(self._prefix))
            self._silence = 0
            return True
        self._utterance += chunk
        self._silence = 0 if loud else self._silence + 10
        end_ms = pos_ms + 10
        if self._silence >= _SILENCE_MS or end_ms - self.speech_on >= _MAX_UTTERANCE_MS:
            start, self.speech_on = self.speech_on, None
            self.quiet.set()
            pcm = bytes(self._utterance)
            self._utterance = bytearray()
            self._prefix.clear()
            ended.append((pcm, start, end_ms - self._silence))
        return False
