"""Wake-word detection (voiced/audio/wakeword.py).

The plumbing (cutoffs, the refractory period, stream positions, resampling, reset) is
tested with a detector whose probabilities the test scripts. The real models (shipped
in pymicro-wakeword's wheel) hear espeak-ng speaking their phrases in several voices and
speeds, fed at 24 kHz in 20 ms frames as the daemon would; and ordinary speech, phrases
that sound alike, and noise, for the false activations. Figures are printed
(``pytest -s``) and quoted in docs/architecture.md.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import numpy as np
import pytest

from tests.room import espeak
from voiced.audio.native import MissingLibraryError
from voiced.audio.wakeword import (
    BUILTIN_MODELS,
    Detection,
    MicroWakeWordDetector,
    StreamingDetector,
    WakeWordDetector,
)
from voiced.wire import SAMPLE_RATE

FRAME = SAMPLE_RATE // 50 * 2  # the daemon's 20 ms frames, in bytes


class Scripted(StreamingDetector):
    """A detector the test controls: ``script[step]`` is the probability of model "a"
    at that 10 ms step (0 elsewhere)."""

    def __init__(self, script: dict[int, float], *, rate: int = 16_000,
                 refractory_s: float = 1.0) -> None:
        super().__init__(["a"], {"a": 0.5}, {"a": "Hey A"}, rate=rate,
                         refractory_s=refractory_s)
        self.script = script
        self.step = 0

    def _probabilities(self, step: bytes) -> Iterator[tuple[str, float]]:
        assert len(step) == 320  # 10 ms at 16 kHz
        self.step += 1
        yield "a", self.script.get(self.step, 0.0)

    def reset(self) -> None:
        super().reset()
        self.step = 0


def feed_all(det: WakeWordDetector, pcm: bytes, chunk: int) -> list[Detection]:
    found: list[Detection] = []
    for i in range(0, len(pcm), chunk):
        found += det.feed(pcm[i:i + chunk])
    return found


def test_a_detection_carries_model_phrase_score_and_position() -> None:
    det = Scripted({50: 0.4, 120: 0.9})
    found = feed_all(det, bytes(16000 * 2 * 2), 640)
    assert found == [Detection("a", "Hey A", 0.9, 1200.0)]  # 0.4 is under the cutoff


def test_the_refractory_period_is_counted_in_audio() -> None:
    script = {100: 0.9, 101: 0.95, 150: 0.9, 199: 0.9, 200: 0.9, 350: 0.8}
    det = Scripted(script, refractory_s=1.0)
    found = feed_all(det, bytes(16000 * 2 * 4), 3200)
    # 101, 150 and 199 fall within a second of 100; 200 is a second later
    assert [d.at_ms for d in found] == [1000.0, 2000.0, 3500.0]
    det = Scripted(script, refractory_s=0.0)
    assert len(feed_all(det, bytes(16000 * 2 * 4), 3200)) == len(script)


def test_24_khz_is_resampled_in_any_chunks_and_positions_count_what_was_heard() -> None:
    det = Scripted({100: 0.9, 250: 0.9}, rate=24_000)
    found = feed_all(det, bytes(SAMPLE_RATE * 2 * 3), 714)  # odd chunk sizes
    assert [d.at_ms for d in found] == [1000.0, 2500.0]
    # 3 s is 300 steps; libsoxr's LQ filter holds 300 samples (18.75 ms) back at 24 ->
    # 16 kHz: 47700 samples out, 298 steps and 20 samples waiting for the next
    assert det.step == 298 and len(det._pending) == 40


def test_reset_starts_positions_again() -> None:
    det = Scripted({100: 0.9})
    assert len(feed_all(det, bytes(16000 * 2 * 2), 320)) == 1
    det.reset()
    assert [d.at_ms for d in feed_all(det, bytes(16000 * 2 * 2), 320)] == [1000.0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rate": 44100}, "wake-word audio must be at one of (24000, 16000) Hz, not 44100"),
    ({"refractory_s": -1}, "refractory_s must be >= 0, not -1"),
])
def test_bad_settings_are_clear_errors(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Scripted({}, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="whole number of samples"):
        Scripted({}).feed(b"\x00\x01\x02")


def test_without_the_library_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    import builtins
    real_import = builtins.__import__

    def no_pymicro(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("pymicro_wakeword"):
            raise ImportError("No module named 'pymicro_wakeword'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_pymicro)
    with pytest.raises(MissingLibraryError, match=r"pip install 'voiced\[wake\]'"):
        MicroWakeWordDetector()
    with pytest.raises(ValueError, match="unknown wake-word model 'hey_siri'"):
        MicroWakeWordDetector(["hey_siri"])  # checked before the import


# --- the real models ------------------------------------------------------------------

real = pytest.mark.skipif(importlib.util.find_spec("pymicro_wakeword") is None,
                          reason="pymicro-wakeword is not installed (voiced[wake])")

PHRASES = {"okay_nabu": "okay nabu", "hey_jarvis": "hey jarvis", "alexa": "alexa",
           "hey_mycroft": "hey mycroft"}
VOICES = ("en-us", "en-gb", "en+f3", "en-us+m3", "en-gb-x-rp")
SPEEDS = (140, 160, 180)

ORDINARY = [
    "Good morning, what is the weather going to be like this afternoon?",
    "Please add milk, eggs and a loaf of bread to the shopping list.",
    "The train to the city leaves at a quarter past eight from platform two.",
    "Could you remind me to call my sister when I get home tonight?",
    "I think we should paint the kitchen a lighter colour next spring.",
    "How many tablespoons are there in a cup of flour?",
    "The meeting has been moved to Thursday because half the team is away.",
    "Turn the music down a little, the baby is finally asleep.",
    "My favourite book when I was young was about a boy and his dog.",
    "We drove along the coast and stopped at every small harbour town.",
    "Set a timer for twelve minutes, the pasta should be ready by then.",
    "Tell me a joke about penguins that my children will understand.",
    "The garden needs watering every evening while it stays this warm.",
    "Did anyone see where I left the keys to the garage?",
    "Tomorrow I will start running again, maybe three kilometres a day.",
    "The museum is closed on Mondays but open late on Fridays.",
    "Can you spell the word necessary for me, one letter at a time?",
    "Our neighbours are having a party, so it might be noisy tonight.",
    "What time does the pharmacy on the corner close on Saturdays?",
    "The recipe says to bake it for forty minutes at two hundred degrees.",
]
NEAR_MISSES = ["okay", "okay now", "nabu", "a new boo", "hey travis", "jarvis", "hey",
               "alex", "alexander", "a lexus", "hey microsoft", "my croft", "hey my crop",
               "okay, maybe", "hey there"]


def at_24k(pcm16k_or_24k: np.ndarray, pad_s: float = 0.5) -> bytes:
    pad = np.zeros(int(pad_s * SAMPLE_RATE), np.int16)
    return np.concatenate([pad, pcm16k_or_24k, pad]).astype("<i2").tobytes()


@real
def test_the_shipped_models_hear_synthesized_wake_phrases() -> None:
    det = MicroWakeWordDetector(BUILTIN_MODELS, refractory_s=2.0)
    table: dict[str, list[str]] = {m: [] for m in BUILTIN_MODELS}
    for model, phrase in PHRASES.items():
        for voice in VOICES:
            for speed in SPEEDS:
                det.reset()
                speech = espeak(phrase, voice, speed)
                found = feed_all(det, at_24k(speech), FRAME)
                hits = [d for d in found if d.model == model]
                if hits:
                    end_ms = (0.5 + len(speech) / SAMPLE_RATE) * 1000
                    assert 500 < hits[0].at_ms <= end_ms + 500, hits  # while or just after
                    assert len(found) == 1  # one utterance, one event: the refractory
                table[model].append(f"{voice}/{speed}" if hits else "")
    print("\nwake phrases heard (of 15: 5 espeak-ng voices x speeds 140/160/180):")
    tried = [f"{v}/{s}" for v in VOICES for s in SPEEDS]
    for model, hits in table.items():
        missed = [t for t, h in zip(tried, hits, strict=True) if not h]
        print(f"  {model:<12} {sum(map(bool, hits)):2d}/15  missed: {missed}")
    # measured on x86-64 (2026-12-04); espeak-ng and TFLite are deterministic here
    assert sum(map(bool, table["okay_nabu"])) >= 14
    assert sum(map(bool, table["alexa"])) >= 12
    assert sum(map(bool, table["hey_mycroft"])) >= 12
    # hey_jarvis hears almost none of espeak-ng's voices (0/15 measured): reported, and
    # the docs say so; its plumbing is the same as the others'


@real
def test_false_activations_on_ordinary_speech_near_misses_and_noise() -> None:
    det = MicroWakeWordDetector(BUILTIN_MODELS, refractory_s=2.0)
    speech_s = 0.0
    false: list[tuple[str, str]] = []
    for voice in VOICES:
        for speed in (150, 175):
            pcm = espeak(" ".join(ORDINARY), voice, speed)
            speech_s += len(pcm) / SAMPLE_RATE
            det.reset()
            false += [(d.model, f"{voice}/{speed}") for d in feed_all(det, at_24k(pcm), FRAME)]
    near: list[tuple[str, str]] = []
    for phrase in NEAR_MISSES:
        for voice in VOICES:
            det.reset()
            near += [(d.model, phrase) for d in feed_all(det, at_24k(espeak(phrase, voice)),
                                                         FRAME)]
    rng = np.random.default_rng(5)
    noise_s = 180.0
    n = int(noise_s * SAMPLE_RATE)
    white = rng.standard_normal(n) * 1000
    brown = np.cumsum(rng.standard_normal(n))
    brown = (brown - np.convolve(brown, np.ones(2400) / 2400, "same")) * 30
    babble = sum(np.resize(espeak(" ".join(ORDINARY[i::4]), v, 170).astype(float), n)
                 for i, v in enumerate(VOICES[:4])) * 0.25
    noisy: list[tuple[str, str]] = []
    for name, x in (("white", white), ("brown", brown), ("babble", babble)):
        det.reset()
        pcm = np.clip(x, -32768, 32767).astype("<i2").tobytes()
        noisy += [(d.model, name) for d in feed_all(det, pcm, FRAME)]
    hours = speech_s / 3600
    print(f"\nfalse activations, all four models listening: {len(false)} in "
          f"{speech_s / 60:.1f} min of ordinary speech ({len(false) / hours:.1f} per hour) "
          f"{false}; {len(near)} in {len(NEAR_MISSES) * len(VOICES)} near-miss utterances "
          f"{sorted(set(near))}; {len(noisy)} in {3 * noise_s / 60:.0f} min of white, "
          f"brown and babble noise {noisy}")
    assert speech_s > 600  # over ten minutes of it
    # measured: none in ordinary speech or noise (see the printout for the near misses)
    assert false == [] and noisy == []
