"""The simulator's ears and mouth: pocketsphinx when installed, espeak-ng when installed.

Without them the simulator still works, and says so: a transcript that announces it is
simulated, and a clearly synthetic tone sequence instead of speech.
"""

from __future__ import annotations

import array
import io
import logging
import math
import shutil
import subprocess
import wave
from typing import Any

from voiced.audio.libsoxr import Resampler
from voiced.wire import SAMPLE_RATE

logger = logging.getLogger(__name__)

_decoder: Any = None
_decoder_failed = False


def transcribe(pcm24: bytes) -> tuple[str, bool]:
    """Transcribe 24 kHz PCM16; returns (text, real) where real says an ASR ran."""
    global _decoder, _decoder_failed
    seconds = len(pcm24) / 2 / SAMPLE_RATE
    if not _decoder_failed:
        try:
            if _decoder is None:
                from pocketsphinx import Decoder  # type: ignore[import-untyped]

                _decoder = Decoder(samprate=16000, logfn="/dev/null")
            a16 = Resampler(SAMPLE_RATE, 16000, quality="HQ").process(pcm24, last=True)
            _decoder.start_utt()
            _decoder.process_raw(a16, full_utt=True)
            _decoder.end_utt()
            hyp = _decoder.hyp()
            return (hyp.hypstr if hyp is not None else ""), True
        except ImportError:
            _decoder_failed = True
            logger.info("pocketsphinx is not installed: transcripts will be placeholders")
        except Exception:  # noqa: BLE001 - a broken ASR must not break the simulator
            _decoder_failed = True
            logger.exception("pocketsphinx failed: transcripts will be placeholders")
    return f"(simulated transcript of {seconds:.1f} seconds of speech)", False


def speak(text: str) -> bytes:
    """Speak ``text`` as 24 kHz PCM16: espeak-ng when installed, else tones."""
    exe = shutil.which("espeak-ng")
    if exe is not None:
        try:
            out = subprocess.run([exe, "-v", "en-us", "-s", "165", "--stdout", text],
                                 capture_output=True, timeout=20, check=True).stdout
            with wave.open(io.BytesIO(out), "rb") as w:
                rate = w.getframerate()
                pcm = w.readframes(w.getnframes())
            return Resampler(rate, SAMPLE_RATE, quality="HQ").process(pcm, last=True)
        except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as e:
            logger.warning("espeak-ng failed (%s): speaking in tones", e)
    return tones(len(text.split()))


def tones(words: int) -> bytes:
    """A clearly synthetic stand-in for speech: one 150 ms beep per word."""
    n = int(0.15 * SAMPLE_RATE)
    hann = [0.5 - 0.5 * math.cos(2 * math.pi * k / (n - 1)) for k in range(n)]
    gap = bytes(2 * int(0.08 * SAMPLE_RATE))
    out = []
    for i in range(max(1, words)):
        step = 2 * math.pi * 440.0 * (1.25 ** (i % 4)) / SAMPLE_RATE
        beep = array.array("h", (int(0.3 * 32767 * math.sin(step * k) * hann[k])
                                 for k in range(n)))
        out += [beep.tobytes(), gap]
    return b"".join(out)
