"""On-device voice activity detection (``turn_detection.type: client_vad``).

WebRTC's VAD (webrtcvad-wheels): a few hundred kB, microseconds per frame, robust on
noisy far-field audio, and it runs on the slowest Pi. It accepts 8/16/32/48 kHz only,
so the 24 kHz stream is resampled to 16 kHz (libsoxr's streaming resampler, continuous
across frames) and judged in 10 ms pieces. A frame counts as speech when most of its
pieces are; the session core turns those verdicts into turns.
"""

from __future__ import annotations

from voiced.audio.libsoxr import Resampler
from voiced.wire import SAMPLE_RATE

_RATE = 16_000
_PIECE = _RATE // 100 * 2  # bytes in 10 ms at 16 kHz


class SpeechDetector:
    """Says whether a 24 kHz PCM16 mono frame holds speech."""

    def __init__(self, aggressiveness: int = 2) -> None:
        import webrtcvad  # type: ignore[import-untyped]  # optional extra: voiced[vad]

        self._vad = webrtcvad.Vad(aggressiveness)
        self._resampler = Resampler(SAMPLE_RATE, _RATE, quality="LQ")
        self._pending = b""
        self._last = False

    def is_speech(self, pcm: bytes) -> bool:
        """The verdict for this frame (the previous one while too little has arrived)."""
        audio = self._pending + self._resampler.process(pcm)
        whole = len(audio) // _PIECE * _PIECE
        self._pending = audio[whole:]
        if not whole:
            return self._last
        voiced = sum(self._vad.is_speech(audio[i:i + _PIECE], _RATE)
                     for i in range(0, whole, _PIECE))
        self._last = voiced * 2 > whole // _PIECE
        return self._last
