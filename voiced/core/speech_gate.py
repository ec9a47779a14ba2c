"""On-device turn taking (``client_vad``): which mic frames to send, and when a turn ends.

Pure logic, like the session core that owns it: fed one frame and the VAD's verdict on
it at a time, it answers with the frames to send now and whether a turn started or
ended. Frames wait in a pre-roll ring until ``min_speech_ms`` of consecutive speech
starts a turn (the ring is then sent, so word onsets are kept); after the speech,
``tail_ms`` of silence is still sent and the rest held back; ``silence_ms`` of silence
ends the turn.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from voiced import wire

_SAMPLES_PER_MS = wire.SAMPLE_RATE // 1000


@dataclass(frozen=True, slots=True)
class ClientVad:
    """How on-device turn detection gates and ends the user's turns (milliseconds)."""

    pre_roll_ms: int = 300
    """Audio kept from before speech was detected and sent with it (word onsets)."""
    tail_ms: int = 300
    """Silence still sent after the speech (word endings)."""
    silence_ms: int = 700
    """Silence that ends the turn: the buffer is committed and a reply asked for."""
    min_speech_ms: int = 60
    """Speech this long (consecutive) starts a turn; shorter clicks do not."""


@dataclass(slots=True)
class Gated:
    """What one frame led to."""

    send: list[bytes] = field(default_factory=list)
    started: bool = False
    ended: bool = False
    held_back: int = 0
    """Samples that will never be sent (silence)."""


class SpeechGate:
    """The turn-taking state of one microphone under ``client_vad``."""

    def __init__(self, vad: ClientVad) -> None:
        self.vad = vad
        self.talking = False
        self._preroll: deque[bytes] = deque()
        self._preroll_samples = 0
        self._voiced = 0  # consecutive speech samples (not talking yet)
        self._silence = 0  # consecutive silence samples (while talking)

    def reset(self) -> None:
        """Forget the turn in progress and the pre-roll (the mic went off)."""
        self.talking = False
        self._voiced = self._silence = 0
        self._preroll.clear()
        self._preroll_samples = 0

    def end_turn(self) -> None:
        """The turn is over (silence, or it was ended from outside)."""
        self.talking = False
        self._voiced = self._silence = 0

    def feed(self, pcm: bytes, speech: bool) -> Gated:
        """One frame (PCM16 24 kHz mono) and whether the VAD heard speech in it."""
        out = Gated()
        n = len(pcm) // wire.BYTES_PER_SAMPLE
        vad = self.vad
        if not self.talking:
            self._preroll.append(pcm)
            self._preroll_samples += n
            self._voiced = self._voiced + n if speech else 0
            keep = (vad.pre_roll_ms + vad.min_speech_ms) * _SAMPLES_PER_MS
            while (self._preroll_samples
                   - len(self._preroll[0]) // wire.BYTES_PER_SAMPLE >= keep):
                dropped = len(self._preroll.popleft()) // wire.BYTES_PER_SAMPLE
                self._preroll_samples -= dropped
                out.held_back += dropped
            if self._voiced >= vad.min_speech_ms * _SAMPLES_PER_MS:
                self.talking, self._silence = True, 0
                out.started = True
                out.send = list(self._preroll)
                self._preroll.clear()
                self._preroll_samples = 0
            return out
        self._silence = 0 if speech else self._silence + n
        if self._silence <= vad.tail_ms * _SAMPLES_PER_MS:
            out.send = [pcm]
        else:
            out.held_back = n
        if self._silence >= vad.silence_ms * _SAMPLES_PER_MS:
            self.end_turn()
            out.ended = True
        return out
