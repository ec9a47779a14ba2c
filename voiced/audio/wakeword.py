"""Wake-word detection: a small protocol and an adapter to pymicro-wakeword.

pymicro-wakeword (the library Home Assistant's Linux Voice Assistant uses) runs
microWakeWord's streaming TFLite models through a TensorFlow Lite C library and ships
both inside its wheel: models ``okay_nabu``, ``hey_jarvis``, ``alexa`` and
``hey_mycroft`` (50-80 kB each), no download at run time. Its wheels cover arm64 and
armv7l (1.6 / 1.8 MB); its feature front end, pymicro-features, has an arm64 wheel and
builds from source on armhf (C++; Raspberry Pi OS's piwheels may have it built). It
needs numpy, which the daemon otherwise does without: the extra ``voiced[wake]`` and
its memory cost are the price of the feature (docs/architecture.md, "Wake word").

A ``WakeWordDetector`` takes PCM16 mono frames at its ``rate`` (24 or 16 kHz) and
returns ``Detection`` events. The adapter resamples 24 kHz to the models' 16 kHz with
libsoxr, feeds 10 ms steps to one shared feature front end and every model, and
applies each model's probability cutoff (from its own configuration, or the caller's
``threshold``). After a detection it stays silent for ``refractory_s`` of audio, counted
in the audio fed (not wall-clock time), so one utterance is one event.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from voiced.audio.native import MissingLibraryError
from voiced.wire import BYTES_PER_SAMPLE

MODEL_RATE: Final = 16_000
RATES: Final = (24_000, 16_000)
BUILTIN_MODELS: Final = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")
_STEP: Final = MODEL_RATE // 100 * BYTES_PER_SAMPLE  # the front end's 10 ms


@dataclass(frozen=True)
class Detection:
    """A wake word heard."""

    model: str
    """The model's name, e.g. ``okay_nabu``."""
    phrase: str
    """What it listens for, e.g. ``Okay Nabu``."""
    score: float
    """The model's probability (its sliding mean) when it crossed the cutoff, 0..1."""
    at_ms: float
    """Where in the audio fed since the start (or ``reset()``) it was heard."""


class WakeWordDetector(Protocol):
    """Anything that turns mic frames into wake-word detections."""

    rate: int
    """The sample rate ``feed`` takes (24000 or 16000)."""
    models: tuple[str, ...]
    """The models it listens with."""

    def feed(self, pcm: bytes) -> list[Detection]:
        """PCM16 mono at ``rate``, any length; the detections it completed."""

    def reset(self) -> None:
        """Forget the audio so far (after a pause in feeding, e.g. while it was off)."""


class StreamingDetector:
    """What every detector here shares: 16 kHz, 10 ms steps, cutoffs, the refractory.

    Resampling from 24 kHz, stream positions and the refractory period live here;
    subclasses say how a 10 ms step becomes per-model probabilities
    (``_probabilities``).
    """

    def __init__(self, models: Sequence[str], cutoffs: dict[str, float], phrases:
                 dict[str, str], *, rate: int = 24_000, refractory_s: float = 2.0) -> None:
        if rate not in RATES:
            raise ValueError(f"wake-word audio must be at one of {RATES} Hz, not {rate}")
        if refractory_s < 0:
            raise ValueError(f"refractory_s must be >= 0, not {refractory_s}")
        if not models:
            raise ValueError("no wake-word model given")
        self.rate = rate
        self.models = tuple(models)
        self.cutoffs = dict(cutoffs)
        self.phrases = dict(phrases)
        self.refractory_s = refractory_s
        self._resampler: Any = None
        if rate != MODEL_RATE:
            from voiced.audio.libsoxr import Resampler

            self._resampler = Resampler(rate, MODEL_RATE, quality="LQ")
        self._pending = b""
        self._steps = 0  # 10 ms steps fed to the models
        self._quiet_until = 0  # no detection before this step (the refractory period)

    def feed(self, pcm: bytes) -> list[Detection]:
        """PCM16 mono at ``rate``; the detections completed by it."""
        if len(pcm) % BYTES_PER_SAMPLE:
            raise ValueError("PCM16 audio must be a whole number of samples")
        audio = self._resampler.process(pcm) if self._resampler is not None else pcm
        audio = self._pending + audio
        whole = len(audio) // _STEP * _STEP
        self._pending = audio[whole:]
        found: list[Detection] = []
        for i in range(0, whole, _STEP):
            self._steps += 1
            for model, score in self._probabilities(audio[i:i + _STEP]):
                if score > self.cutoffs[model] and self._steps >= self._quiet_until:
                    found.append(Detection(model, self.phrases[model], score,
                                           self._steps * 10.0))
                    self._quiet_until = self._steps + round(self.refractory_s * 100)
        return found

    def _probabilities(self, step: bytes) -> Iterator[tuple[str, float]]:
        """(model, probability) for each model that produced one for this 10 ms step."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the audio so far; positions start again at 0."""
        if self._resampler is not None:
            self._resampler.clear()
        self._pending = b""
        self._steps = 0
        self._quiet_until = 0


def _pymicro() -> Any:
    try:
        import pymicro_wakeword
    except ImportError as e:
        raise MissingLibraryError(
            "pymicro-wakeword is not installed (pip install 'voiced[wake]'); voiced needs "
            f"it for wake-word detection ({e})") from e
    return pymicro_wakeword


class MicroWakeWordDetector(StreamingDetector):
    """pymicro-wakeword's built-in models behind ``WakeWordDetector``.

    Args:
        models: built-in model names (``BUILTIN_MODELS``).
        rate: the rate ``feed`` takes; 24 kHz is resampled to the models' 16 kHz.
        threshold: a probability cutoff for every model instead of each model's own
            (0.85-0.97, tuned by their author for few false activations).
        refractory_s: audio after a detection in which nothing more is detected.

    Raises:
        MissingLibraryError: pymicro-wakeword is not installed.
        ValueError: an unknown model, rate or threshold.
    """

    def __init__(self, models: Sequence[str] = ("okay_nabu",), *, rate: int = 24_000,
                 threshold: float | None = None, refractory_s: float = 2.0) -> None:
        unknown = [m for m in models if m not in BUILTIN_MODELS]
        if unknown:
            raise ValueError(f"unknown wake-word model {unknown[0]!r} "
                             f"(one of {', '.join(BUILTIN_MODELS)})")
        if threshold is not None and not 0 < threshold < 1:
            raise ValueError(f"wake-word threshold must be between 0 and 1, not {threshold}")
        mww = _pymicro()
        self._models = {m: mww.MicroWakeWord.from_builtin(mww.Model(m)) for m in models}
        self._features = mww.MicroWakeWordFeatures()
        super().__init__(
            list(models),
            {m: threshold if threshold is not None else float(w.probability_cutoff)
             for m, w in self._models.items()},
            {m: str(w.wake_word) for m, w in self._models.items()},
            rate=rate, refractory_s=refractory_s)

    def _probabilities(self, step: bytes) -> Iterator[tuple[str, float]]:
        for features in self._features.process_streaming(step):
            for name, model in self._models.items():
                p = model.process_streaming_prob(features)
                if p is not None:
                    yield name, float(p)

    def reset(self) -> None:
        """Forget the audio so far, in the models too (they are reloaded: a few ms)."""
        super().reset()
        self._features.reset()
        for model in self._models.values():
            model.reset()
