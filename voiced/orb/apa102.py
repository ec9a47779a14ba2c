"""The ``apa102`` orb driver: an addressable ring over SPI (ReSpeaker HATs and similar)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from voiced.config import LedSettings
from voiced.orb import Pixel


def encode_frame(pixels: Sequence[tuple[int, int, int]], brightness: int,
                 color_order: str = "bgr") -> bytes:
    """The APA102 byte stream for ``pixels`` (RGB 0-255).

    Start frame (4 × 0x00), then per LED ``0xE0 | brightness`` and the three colour bytes
    in ``color_order`` (APA102: blue, green, red), then an end frame of
    ``ceil(n / 16)`` zero bytes, which clocks the data through the last LED.
    """
    if not 0 <= brightness <= 31:
        raise ValueError(f"brightness {brightness} is not 0-31")
    if sorted(color_order) != ["b", "g", "r"]:
        raise ValueError(f"colour order {color_order!r} is not a permutation of rgb")
    idx = {"r": 0, "g": 1, "b": 2}
    out = bytearray(4)
    head = 0xE0 | brightness
    for px in pixels:
        out.append(head)
        for c in color_order:
            v = px[idx[c]]
            if not 0 <= v <= 255:
                raise ValueError(f"colour value {v} is not 0-255")
            out.append(v)
    out += bytes(max(1, math.ceil(len(pixels) / 16)))
    return bytes(out)


class SpiWriter(Protocol):
    """The one seam to the SPI bus."""

    def write(self, data: bytes) -> None:
        """Send bytes."""

    def close(self) -> None:
        """Release the bus."""


class SpidevWriter:
    """spidev on the Pi (``/dev/spidev<bus>.<device>``)."""

    def __init__(self, bus: int, device: int, speed_hz: int = 8_000_000) -> None:
        import spidev

        self._spi = spidev.SpiDev()
        self._spi.open(bus, device)
        self._spi.max_speed_hz = speed_hz

    def write(self, data: bytes) -> None:
        """Send bytes."""
        self._spi.writebytes2(data)

    def close(self) -> None:
        """Release the bus."""
        self._spi.close()


class Apa102Orb:
    """An APA102 ring: frames encoded by :func:`encode_frame`, written through ``spi``.

    Args:
        settings: ``leds``.
        spi: the SPI seam (spidev when None).
        pin_factory: gpiozero pin factory for the power-enable pin.
    """

    def __init__(self, settings: LedSettings, spi: SpiWriter | None = None,
                 pin_factory: Any = None) -> None:
        self.pixels = settings.pixels
        self.brightness = settings.brightness
        self.color_order = settings.color_order
        self.power: Any = None
        if settings.power_pin is not None:
            from gpiozero import DigitalOutputDevice

            pin = settings.power_pin
            self.power = DigitalOutputDevice(int(pin) if pin.isdigit() else pin,
                                             initial_value=True, pin_factory=pin_factory)
        try:
            self.spi = spi if spi is not None else SpidevWriter(settings.spi_bus,
                                                                settings.spi_device)
        except BaseException:
            if self.power is not None:
                self.power.close()
            raise

    def show(self, frame: Sequence[Pixel]) -> None:
        """Encode and write one frame."""
        px = [(round(r * 255), round(g * 255), round(b * 255)) for r, g, b in frame]
        self.spi.write(encode_frame(px, self.brightness, self.color_order))

    def close(self) -> None:
        """All pixels off, power off, release SPI and the pin."""
        try:
            self.spi.write(encode_frame([(0, 0, 0)] * self.pixels, 0, self.color_order))
            self.spi.close()
        finally:
            if self.power is not None:
                self.power.off()
                self.power.close()
