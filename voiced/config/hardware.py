"""The ``button:`` and ``leds:`` sections' validators."""

from __future__ import annotations

from typing import Final

from voiced.config.sections import _MISSING, _kind, _Section
from voiced.config.settings import (
    BUTTON_MODES,
    COLOR_ORDERS,
    DEFAULT_PATTERNS,
    EFFECTS,
    GPIO_KINDS,
    LED_DRIVERS,
    PULLS,
    ButtonSettings,
    LedSettings,
    Pattern,
)


def _button(top: _Section) -> ButtonSettings | None:
    if not top.has("button") or top.data.get("button") is None:
        top.raw("button")
        return None
    sec = top.section("button")
    d = ButtonSettings()
    raw_pin = sec.raw("pin")
    pin = d.pin
    if raw_pin is _MISSING:
        sec.bad("pin", "is required (a gpiozero pin name such as 17, GPIO17 or BOARD11)")
    else:
        pin = _pin(sec, "pin", raw_pin) or d.pin
    s = ButtonSettings(
        pin=pin,
        pull=sec.choice("pull", d.pull, PULLS),
        bounce_time_s=sec.num("bounce_time_s", d.bounce_time_s, lo=0, hi=1),
        hold_time_s=sec.num("hold_time_s", d.hold_time_s, lo=0.2, hi=10),
        mode=sec.choice("mode", d.mode, BUTTON_MODES),
    )
    sec.finish()
    return s


_PIN_RE: Final = r"(GPIO|BCM|BOARD|WPI|J8:|P1:)?\d{1,2}"


def _pin(sec: _Section, name: str, raw: object) -> str | None:
    import re

    if isinstance(raw, bool) or not isinstance(raw, str | int):
        sec.bad(name, f"expected a pin name such as 17, GPIO17 or BOARD11, got {_kind(raw)}")
        return None
    pin = str(raw)
    if not re.fullmatch(_PIN_RE, pin, re.IGNORECASE):
        sec.bad(name, f"{pin!r} is not a gpiozero pin name such as 17, GPIO17 or BOARD11")
        return None
    return pin


def _color(sec: _Section, name: str, raw: object) -> tuple[int, int, int] | None:
    if isinstance(raw, str) and len(raw) == 7 and raw.startswith("#"):
        try:
            return (int(raw[1:3], 16), int(raw[3:5], 16), int(raw[5:7], 16))
        except ValueError:
            pass
    if (isinstance(raw, list) and len(raw) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                    for c in raw)):
        return (raw[0], raw[1], raw[2])
    sec.bad(name, f"expected a colour as \"#rrggbb\" or [r, g, b] (0-255), got {raw!r:.40}")
    return None


def _leds(sec: _Section) -> LedSettings:
    d = LedSettings()
    driver = sec.choice("driver", d.driver, LED_DRIVERS)
    patterns = dict(DEFAULT_PATTERNS)
    ps = sec.section("patterns")
    for state in list(ps.data):
        if state not in DEFAULT_PATTERNS:
            continue  # reported as unknown by finish()
        one = ps.section(str(state))
        base = DEFAULT_PATTERNS[str(state)]
        effect = one.choice("effect", base.effect, EFFECTS)
        color = base.color
        raw = one.raw("color")
        if raw is not _MISSING:
            color = _color(one, "color", raw) or base.color
        period = one.num("period_s", base.period_s, lo=0.05, hi=60)
        patterns[str(state)] = Pattern(effect, color, period)
        one.finish()
    ps.finish()
    pins: list[str] = []
    raw_pins = sec.raw("pins")
    if raw_pins is not _MISSING and raw_pins is not None:
        items = raw_pins if isinstance(raw_pins, list) else [raw_pins]
        for i, p in enumerate(items):
            pin = _pin(sec, f"pins[{i}]", p)
            if pin is not None:
                pins.append(pin)
    kind = sec.choice("kind", d.kind, GPIO_KINDS)
    power_raw = sec.raw("power_pin")
    power = None if power_raw in (_MISSING, None) else _pin(sec, "power_pin", power_raw)
    active_high = sec.bool_("active_high", d.active_high)
    s = LedSettings(
        driver=driver, patterns=patterns,
        fps=sec.int_("fps", d.fps, lo=1, hi=30), kind=kind,
        pins=tuple(pins), active_high=active_high,
        pixels=sec.int_("pixels", d.pixels, lo=1, hi=1024),
        brightness=sec.int_("brightness", d.brightness, lo=0, hi=31),
        color_order=sec.choice("color_order", d.color_order, COLOR_ORDERS),
        spi_bus=sec.int_("spi_bus", d.spi_bus, lo=0, hi=9),
        spi_device=sec.int_("spi_device", d.spi_device, lo=0, hi=9),
        power_pin=power,
    )
    if driver == "gpio":
        need = {"led": 1, "pwm": 1, "rgb": 3}.get(kind)
        if not pins:
            sec.bad("pins", "is required when leds.driver is gpio")
        elif need is not None and len(pins) != need:
            sec.bad("pins", f"kind {kind} takes {need} pin(s), got {len(pins)}")
    sec.finish()
    return s
