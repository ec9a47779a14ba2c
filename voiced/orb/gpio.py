"""The ``gpio`` orb driver: LEDs through gpiozero (one LED, PWM LED, RGB LED, or a board)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from voiced.config import LedSettings
from voiced.orb import Pixel


def _pin(name: str) -> int | str:
    return int(name) if name.isdigit() else name


class GpioOrb:
    """gpiozero LEDs as an orb.

    ``led``: on when the pixel is brighter than half; ``pwm``: brightness; ``rgb``: the
    colour; ``board``: one PWM LED per pixel (a ring or bar of N LEDs).
    """

    def __init__(self, settings: LedSettings, pin_factory: Any = None) -> None:
        from gpiozero import LED, PWMLED, RGBLED, LEDBoard

        self.kind = settings.kind
        pins = [_pin(p) for p in settings.pins]
        ah = settings.active_high
        self.device: Any
        if self.kind == "led":
            self.device = LED(pins[0], active_high=ah, pin_factory=pin_factory)
        elif self.kind == "pwm":
            self.device = PWMLED(pins[0], active_high=ah, pin_factory=pin_factory)
        elif self.kind == "rgb":
            self.device = RGBLED(*pins, active_high=ah, pin_factory=pin_factory)
        else:
            self.device = LEDBoard(*pins, pwm=True, active_high=ah, pin_factory=pin_factory)
        self.pixels = len(pins) if self.kind == "board" else 1

    def show(self, frame: Sequence[Pixel]) -> None:
        """Drive the pins for one frame."""
        if self.kind == "rgb":
            self.device.color = tuple(round(c, 3) for c in frame[0])
        elif self.kind == "board":
            self.device.value = tuple(round(max(p), 3) for p in frame)
        elif self.kind == "pwm":
            self.device.value = round(max(frame[0]), 3)
        else:
            self.device.value = max(frame[0]) > 0.5

    def close(self) -> None:
        """Off, and release the pins."""
        self.device.off()
        self.device.close()
