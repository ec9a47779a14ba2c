"""The ``wake_word:`` and ``earcons:`` sections' validators (hands-free, issue 22)."""

from __future__ import annotations

from voiced import guard
from voiced.config.sections import _MISSING, _Section
from voiced.config.settings import EARCON_EVENTS, EarconSettings, WakeWordSettings


def _wake_word(sec: _Section) -> WakeWordSettings:
    from voiced.audio.wakeword import BUILTIN_MODELS  # no numpy: names only

    d = WakeWordSettings()
    enabled = sec.bool_("enabled", d.enabled)
    models = d.models
    raw = sec.raw("models")
    if raw is not _MISSING:
        if isinstance(raw, str):
            raw = [raw]
        if (not isinstance(raw, list) or not raw or len(raw) > len(BUILTIN_MODELS)
                or not all(isinstance(m, str) for m in raw)):
            sec.bad("models", f"expected a list of model names ({', '.join(BUILTIN_MODELS)})")
        elif unknown := [m for m in raw if m not in BUILTIN_MODELS]:
            sec.bad("models", f"unknown model {guard.printable(unknown[0])!r}; expected some of: "
                    f"{', '.join(BUILTIN_MODELS)}")
        else:
            models = tuple(dict.fromkeys(raw))
    threshold = None
    if sec.raw("threshold") not in (_MISSING, None):
        threshold = sec.num("threshold", 0.9, lo=0.01, hi=0.99)
    s = WakeWordSettings(enabled=enabled, models=models, threshold=threshold,
                         refractory_s=sec.num("refractory_s", d.refractory_s, lo=0, hi=60))
    sec.finish()
    return s


def _earcons(sec: _Section) -> EarconSettings:
    d = EarconSettings()
    enabled = sec.bool_("enabled", d.enabled)
    gain = sec.num("gain", d.gain, lo=0, hi=1)
    ev = sec.section("events")
    events = tuple((name, ev.num(name, 1.0, lo=0, hi=1)) for name in EARCON_EVENTS)
    ev.finish()
    sec.finish()
    return EarconSettings(enabled=enabled, gain=gain, events=events)
